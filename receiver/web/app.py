"""The HTTP service: the app factory, with the webhook front before the read API."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
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
from receiver.pbx.reconcile import Rounds
from receiver.settings import Settings
from receiver.store import SCHEMA_VERSION, Storage, open_storage
from receiver.store.backend import StorageUnavailable, is_postgresql
from receiver.web import api as api_routes
from receiver.web.background import Background, reconcile_periodically
from receiver.web.errors import error
from receiver.web.metrics import Metrics
from receiver.web.metrics import metrics as metrics_text
from receiver.web.openapi import spec
from receiver.web.pages import environment, page_routes
from receiver.web.recordings import RecordingLinks, call_recording
from receiver.web.session import has_session
from receiver.web.stream import Feed, stream_events
from receiver.web.webhook import Webhook

log = logging.getLogger("receiver")

READY_TIMEOUT = 2.0  # seconds /readyz waits for the write lock


def expected_schema(db: Path | str) -> int:
    """This receiver's schema version for the database's backend (each has its own list)."""
    if is_postgresql(db):
        from receiver.store.pg_schema import SCHEMA_VERSION as POSTGRESQL_VERSION

        return POSTGRESQL_VERSION
    return SCHEMA_VERSION


async def healthz(request: Request) -> Response:
    """GET /healthz (liveness): 200 when the process and its database answer, with how far the
    calls are built, the silent myids and the last prune."""
    state = request.app.state
    store: Storage = state.store
    background: Background = state.background
    try:
        version = await store.check()
        calls = await store.calls_state()
    except Exception as failure:
        return error(503, f"the database does not answer: {failure}")
    rounds = request.app.state.reconcile_rounds
    retention = background.retention
    return JSONResponse(
        {
            "ok": True,
            "schema_version": version,
            "expected": expected_schema(state.settings.db),
            "calls": calls.json(),
            "reconcile": rounds.json() if rounds is not None else None,
            "silent": background.silent_json(),
            "retention": retention.json() if retention is not None else None,
        }
    )


async def readyz(request: Request) -> Response:
    """GET /readyz (readiness): 200 when deliveries can be stored: the writer runs, takes the
    write lock, and the disk has --min-free-disk bytes free; 503 saying what is wrong."""
    state = request.app.state
    store: Storage = state.store
    settings: Settings = state.settings
    problems = []
    writer = store.writer_state()
    if not writer.alive:
        problems.append("the writer process is not running")
    else:
        try:
            await asyncio.wait_for(store.check_writable(), READY_TIMEOUT)
        except TimeoutError:
            problems.append(f"the database took no write lock within {READY_TIMEOUT:g} s")
        except Exception as failure:
            problems.append(f"the database cannot be written: {failure}")
    try:
        sizes = await store.sizes()
    except Exception as failure:
        return error(503, f"not ready: the database does not answer: {failure}")
    free = sizes.disk_free_bytes
    if free is not None and free < settings.min_free_disk:
        problems.append(
            f"{free} bytes free on the database's disk, under --min-free-disk "
            f"{settings.min_free_disk}: free some space"
        )
    if problems:
        return error(503, "not ready: " + "; ".join(problems))
    return JSONResponse({"ok": True, "disk_free_bytes": free, "queued": writer.queued})


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


async def storage_unavailable(request: Request, exc: Exception) -> Response:
    """A read that met a database gone away (PostgreSQL restarting): 503, one line logged."""
    log.warning("%s %s: 503, %s", request.method, request.url.path, exc)
    return error(503, str(exc))


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, f"internal error: {type(exc).__name__}")


def create_app(settings: Settings) -> Webhook:
    """The receiver's ASGI app; the database opens and closes with the app's lifespan."""
    repeated = Repeated(log)
    metrics = Metrics()
    feed = Feed(settings.unknown_end_after * 1_000_000)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        async with open_storage(
            settings.db,
            rejects_max=settings.rejects_max,
            rejects_max_bytes=settings.rejects_max_bytes,
            own_process=True,
            on_commit=metrics.committed,
        ) as store:
            app.state.store = store
            app.state.metrics = metrics
            app.state.feed = feed
            app.state.templates = environment(settings)
            app.state.recording_links = RecordingLinks(settings)
            app.state.reconcile_rounds = None
            background = Background(store, settings, repeated, on_calls_built=feed.touch)
            app.state.background = background
            app.state.watch = background.watch
            tasks = [
                asyncio.create_task(background.run(), name="receiver-background"),
                asyncio.create_task(feed.run(store, repeated), name="receiver-feed"),
            ]
            if settings.reconcile_seconds is not None:
                rounds = app.state.reconcile_rounds = Rounds(settings.reconcile_seconds)
                tasks.append(
                    asyncio.create_task(
                        reconcile_periodically(store, settings, rounds, repeated),
                        name="receiver-reconcile",
                    )
                )
            try:
                yield
            finally:
                feed.close()
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                app.state.recording_links.close()
                repeated.flush_all()

    api = Mount(
        "/api",
        routes=[
            Route("/events", api_routes.list_events),
            Route("/events/{id:int}", api_routes.get_event),
            Route("/calls", api_routes.list_calls),
            Route("/calls/{call_id}", api_routes.get_call),
            Route("/calls/{call_id}/recording", call_recording),
            Route("/reports/missed", api_routes.missed_report),
            Route("/reports/extensions", api_routes.extensions_report),
            Route("/rejects", api_routes.list_rejects),
        ],
        middleware=[Middleware(BearerAuth, token=settings.api_token)],
    )
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: http_error,
        StorageUnavailable: storage_unavailable,
        Exception: server_error,
    }
    rest = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route(
                "/metrics",
                metrics_text,
                middleware=[
                    Middleware(
                        BearerAuth, token=None if settings.metrics_public else settings.api_token
                    )
                ],
            ),
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
    return Webhook(rest, settings, repeated, metrics, feed)
