"""The HTTP service: the app factory, with the webhook front before the read API."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.logs import Repeated
from receiver.settings import Settings
from receiver.store import SCHEMA_VERSION, Storage, open_storage
from receiver.web import api as api_routes
from receiver.web.errors import error
from receiver.web.openapi import spec
from receiver.web.pages import environment, page_routes
from receiver.web.session import has_session
from receiver.web.stream import Feed, stream_events
from receiver.web.webhook import Webhook

log = logging.getLogger("receiver")

BACKGROUND_SECONDS = 0.2


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when the database answers."""
    store: Storage = request.app.state.store
    try:
        version = await store.check()
        calls = await store.calls_state()
    except Exception as failure:
        return error(503, f"the database does not answer: {failure}")
    return JSONResponse(
        {"ok": True, "schema_version": version, "expected": SCHEMA_VERSION, "calls": calls.json()}
    )


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json: the API's description."""
    return JSONResponse(spec(request.app.state.settings))


class BearerAuth:
    """ASGI middleware: requests need `Authorization: Bearer <token>` (401 otherwise)."""

    def __init__(self, app: ASGIApp, token: str | None, in_query: bool = False) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.in_query = in_query  # ?token= too, for EventSource, which cannot send headers

    def given(self, scope: Scope) -> bytes | None:
        """The token the request carries; the pages' session cookie counts as carrying it."""
        headers: dict[bytes, bytes] = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            return given.strip()
        if self.token is not None and has_session(scope["headers"], self.token.decode()):
            return self.token
        if self.in_query:
            for name, value in parse_qsl(scope["query_string"].decode("latin-1")):
                if name == "token":
                    return str(value).encode()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is not None and scope["type"] == "http":
            given = self.given(scope)
            if given is None or not hmac.compare_digest(given, self.token):
                response = error(
                    401,
                    "this API needs the header 'Authorization: Bearer <api token>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, f"internal error: {type(exc).__name__}")


async def refresh_calls(store: Storage, repeated: Repeated, feed: Feed) -> None:
    """Five times a second: build the calls of new events (and all of them again after a change
    of CALLS_VERSION; reads never build them)."""
    while True:
        try:
            if await store.refresh_calls(background=True):
                feed.touch()
        except Exception as failure:  # a full disk fails it five times a second
            repeated.log(
                logging.ERROR,
                "background",
                "background work on the database failed; trying again",
                exc_info=failure,
            )
        await asyncio.sleep(BACKGROUND_SECONDS)


def create_app(settings: Settings) -> Webhook:
    """The receiver's ASGI app; the database opens and closes with the app's lifespan."""
    repeated = Repeated(log)
    feed = Feed(settings.unknown_end_after * 1_000_000)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        async with open_storage(
            settings.db,
            rejects_max=settings.rejects_max,
            rejects_max_bytes=settings.rejects_max_bytes,
            own_process=True,
        ) as store:
            app.state.store = store
            app.state.feed = feed
            app.state.templates = environment(settings)
            tasks = [
                asyncio.create_task(refresh_calls(store, repeated, feed), name="receiver-calls"),
                asyncio.create_task(feed.run(store, repeated), name="receiver-feed"),
            ]
            try:
                yield
            finally:
                feed.close()
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                repeated.flush_all()

    api = Mount(
        "/api",
        routes=[
            Route("/events", api_routes.list_events),
            Route("/events/{id:int}", api_routes.get_event),
            Route("/calls", api_routes.list_calls),
            Route("/calls/{call_id}", api_routes.get_call),
            Route("/reports/missed", api_routes.missed_report),
            Route("/reports/extensions", api_routes.extensions_report),
            Route("/rejects", api_routes.list_rejects),
        ],
        middleware=[Middleware(BearerAuth, token=settings.api_token)],
    )
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: http_error,
        Exception: server_error,
    }
    rest = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/openapi.json", openapi_json),
            Route(
                "/api/stream",
                stream_events,
                middleware=[Middleware(BearerAuth, token=settings.api_token, in_query=True)],
            ),
            api,
            *page_routes(settings),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    return Webhook(rest, settings, repeated, feed)
