"""The HTTP service: the webhook the PBX calls, and the read API."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver import api as api_routes
from receiver.event import RawRequest, Reject, Source, now_us
from receiver.openapi import spec
from receiver.parse import MYID, Rejected, parse_request, parse_urlencoded, strip_token
from receiver.settings import Settings
from receiver.store import SCHEMA_VERSION, Store

log = logging.getLogger("receiver")

BACKGROUND_SECONDS = 0.2


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the whole HTTP API."""
    body = {"ok": False, "error": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_body(request: Request, cap: int) -> tuple[bytes, int]:
    """Up to `cap` bytes of the body, and how many bytes it had (at least cap + 1 if more)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return b"", int(declared)  # refuse without reading what will not be kept anyway
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            break
        chunks.append(chunk)
    return b"".join(chunks), size


async def refuse(
    request: Request, received: int, raw: RawRequest, size: int, why: Rejected
) -> Response:
    """Answer a refused delivery with an error, after keeping it in the rejects store."""
    store: Store = request.app.state.store
    query = strip_token(raw.query)
    reject = Reject(
        received_at_us=received,
        status=why.status,
        reason=why.reason,
        raw=RawRequest(raw.method, query, raw.body, raw.content_type),
        myid=parse_urlencoded(query).get(MYID),
        client=request.client.host if request.client else None,
        body_size=size,
    )
    try:
        await store.add_reject(reject)
    except Exception as failure:  # the answer stays the refusal; the log keeps the request
        log.error("could not keep a refused delivery (%s): %r", failure, reject)
    headers = {"Allow": "GET, POST"} if why.status == 405 else None
    return error(why.status, why.reason, headers)


async def webhook(request: Request) -> Response:
    """Receive one PBX event: 200 only once it is committed to the database."""
    settings: Settings = request.app.state.settings
    store: Store = request.app.state.store
    received = now_us()
    method = request.method
    content_type = request.headers.get("content-type")
    body, size = await read_body(request, settings.max_body)
    raw = RawRequest(method, request.scope["query_string"], body, content_type)
    if size > settings.max_body:
        why = Rejected(413, f"the body is {size} bytes, over the {settings.max_body}-byte limit")
        return await refuse(request, received, raw, size, why)
    if method not in ("GET", "POST"):
        why = Rejected(405, f"method {method} is not allowed: the PBX delivers by GET or POST")
        return await refuse(request, received, raw, size, why)
    source = Source.HTTP_GET if method == "GET" else Source.HTTP_POST
    try:
        event, token = parse_request(
            raw, received_at_us=received, source=source, default_myid=settings.default_myid
        )
    except Rejected as why:
        return await refuse(request, received, raw, size, why)
    if not settings.token_accepts(event.myid, token):
        why = Rejected(
            403,
            f"token is missing or wrong for myid {event.myid}: "
            "add token=<secret> to the URL registered with the PBX",
        )
        return await refuse(request, received, raw, size, why)
    try:
        stored = await store.add_event(event)
    except Exception as failure:
        log.error("event NOT stored, answering 503 (%s): %r", failure, event.raw)
        return error(503, f"the event could not be stored: {failure}")
    return JSONResponse({"ok": True, "id": stored.id, "duplicate": stored.duplicate})


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when the database answers."""
    store: Store = request.app.state.store
    try:
        version = await store.check()
    except Exception as failure:
        return error(503, f"the database does not answer: {failure}")
    return JSONResponse({"ok": True, "schema_version": version, "expected": SCHEMA_VERSION})


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json: the API's description."""
    return JSONResponse(spec())


class BearerAuth:
    """ASGI middleware: requests need `Authorization: Bearer <token>` (401 otherwise)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is not None and scope["type"] == "http":
            headers = dict(scope["headers"])
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
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


async def refresh_calls(store: Store) -> None:
    """Five times a second: rebuild changed calls (queries also refresh before reading), and
    make the export lines of events stored before the lines existed."""
    while True:
        try:
            await store.refresh_calls(background=True)
            await store.fill_event_lines(background=True)
        except Exception:
            log.exception("background work on the database failed; trying again")
        await asyncio.sleep(BACKGROUND_SECONDS)


def create_app(settings: Settings) -> Starlette:
    """The receiver's ASGI app; the database opens and closes with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        async with Store(settings.db, rejects_max=settings.rejects_max, own_process=True) as store:
            app.state.store = store
            refresher = asyncio.create_task(refresh_calls(store), name="receiver-calls")
            try:
                yield
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher

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
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: http_error,
        Exception: server_error,
    }
    return Starlette(
        routes=[
            Route("/webhook", webhook, methods=methods),
            Route("/healthz", healthz),
            Route("/openapi.json", openapi_json),
            api,
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
