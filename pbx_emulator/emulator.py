"""A stand-in for the PBX's REST API (pbx-events §5), for tests and demos.

It speaks OAuth2 client credentials, the event-subscription resource and the callback request,
the call history and the recordings (pbx-events §6), with the same status codes and
`{"message": ...}` errors. Its extensions come from pbx_emulator/simulate.py (offices with
phones, an IVR and a queue). Routes of its own, under /emulator/, let `receiver-pbx simulate`
read the subscriptions and put its calls into the history, and tests inject failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pbx_emulator.history import (
    BUSY_MESSAGE,
    CLIENT_NUMBER,
    BadQuery,
    history_filter,
    history_page,
    recording_bytes,
    signature,
)
from pbx_emulator.simulate import make_offices
from receiver.event import EventType

EVENT_TYPES = [t.value for t in EventType]


@dataclasses.dataclass
class PbxConfig:
    client_id: str = "demo"
    client_secret: str = "demo-secret"
    offices: int = 2
    seed: int = 1
    token_ttl: int = 3600  # seconds an access token lives
    subscription_limit: int = 200  # per client, as the provider limits them
    history_delay: float = 0.05  # seconds a call-history request takes (a second one gets 429)
    record_url_ttl: int = 600  # seconds a recording's storage URL stays valid


@dataclasses.dataclass
class Subscription:
    id: int
    extension_id: int
    url: str
    method: str
    event_type: str

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "method": self.method,
            "event_type": self.event_type,
        }


class Pbx:
    """The emulated PBX's state."""

    def __init__(self, config: PbxConfig) -> None:
        self.config = config
        self.offices = make_offices(config.offices, config.seed)
        self.extensions = {e.id: e for office in self.offices for e in office.extensions}
        self.subscriptions: dict[int, Subscription] = {}
        self.next_id = 1
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.faults: list[int] = []  # statuses to answer next, for tests of retries
        self.callbacks: list[dict[str, Any]] = []
        self.history: dict[str, dict[str, Any]] = {}  # call_uuid -> the history's record
        self.recordings: dict[str, str] = {}  # record_uuid -> call_uuid
        self.history_busy = False  # a call-history request is running
        self.history_requests = 0


def message(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": text}, status_code=status, headers=headers)


def pbx_of(request: Request) -> Pbx:
    pbx: Pbx = request.app.state.pbx
    return pbx


def check(request: Request) -> Response | None:
    """An injected fault, or 401 without a live token; None when the request may go on."""
    pbx = pbx_of(request)
    if pbx.faults:
        status = pbx.faults.pop(0)
        headers = {"Retry-After": "0"} if status == 429 else None
        return message(status, f"injected failure {status}", headers)
    if request.url.path == "/oauth/token":
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expiry = pbx.tokens.get(token)
    if scheme.lower() != "bearer" or expiry is None or expiry < time.monotonic():
        return message(401, "Unauthorized")
    return None


async def oauth_token(request: Request) -> Response:
    """POST /oauth/token (client credentials)."""
    if (refused := check(request)) is not None:
        return refused
    pbx = pbx_of(request)
    form = await request.form()
    if form.get("grant_type") != "client_credentials":
        return message(400, "unsupported_grant_type")
    if (form.get("client_id"), form.get("client_secret")) != (
        pbx.config.client_id,
        pbx.config.client_secret,
    ):
        return message(401, "invalid_client")
    token = secrets.token_hex(16)
    pbx.tokens[token] = time.monotonic() + pbx.config.token_ttl
    return JSONResponse(
        {"access_token": token, "token_type": "Bearer", "expires_in": pbx.config.token_ttl}
    )


async def read_subscription(request: Request) -> dict[str, Any] | Response:
    """The JSON body of a subscription request, validated; or the 400 to answer."""
    try:
        body = await request.json()
    except ValueError:
        return message(400, "Request body must be a JSON object")
    if not isinstance(body, dict):
        return message(400, "Request body must be a JSON object")
    url, method, event_type = body.get("url"), body.get("method"), body.get("event_type")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return message(400, "url: an http:// or https:// URL is required")
    if method not in ("GET", "POST"):
        return message(400, "method: must be GET or POST")
    if event_type not in EVENT_TYPES:
        return message(400, f"event_type: must be one of {', '.join(EVENT_TYPES)}")
    return {"url": url, "method": method, "event_type": event_type}


def authorised(request: Request) -> Pbx | Response:
    """The PBX, or the answer (fault, 401) to give instead."""
    if (refused := check(request)) is not None:
        return refused
    return pbx_of(request)


def extension_id(request: Request) -> int | None:
    number = request.path_params["extension_id"]
    return number if number in pbx_of(request).extensions else None


def authorised_extension(request: Request) -> tuple[Pbx, int] | Response:
    """The PBX and the extension of the path; or the answer (fault, 401, 404) to give instead."""
    if (refused := check(request)) is not None:
        return refused
    ext = extension_id(request)
    if ext is None:
        return message(404, "Not found")
    return pbx_of(request), ext


async def events_collection(request: Request) -> Response:
    """GET, POST, DELETE /extension/{id}/event/."""
    found = authorised_extension(request)
    if isinstance(found, Response):
        return found
    pbx, ext = found
    mine = [s for s in pbx.subscriptions.values() if s.extension_id == ext]
    if request.method == "GET":
        return JSONResponse([s.json() for s in mine])
    if request.method == "DELETE":
        for subscription in mine:
            del pbx.subscriptions[subscription.id]
        return Response(status_code=204)
    fields = await read_subscription(request)
    if isinstance(fields, Response):
        return fields
    if len(pbx.subscriptions) >= pbx.config.subscription_limit:
        return message(403, f"Subscription limit reached ({pbx.config.subscription_limit})")
    subscription = Subscription(pbx.next_id, ext, **fields)
    pbx.subscriptions[subscription.id] = subscription
    pbx.next_id += 1
    return JSONResponse(subscription.json(), status_code=201)


async def events_item(request: Request) -> Response:
    """GET, PUT, DELETE /extension/{id}/event/{event_id}."""
    if (refused := check(request)) is not None:
        return refused
    pbx = pbx_of(request)
    ext = extension_id(request)
    subscription = pbx.subscriptions.get(request.path_params["event_id"])
    if ext is None or subscription is None or subscription.extension_id != ext:
        return message(404, "Not found")
    if request.method == "GET":
        return JSONResponse(subscription.json())
    if request.method == "DELETE":
        del pbx.subscriptions[subscription.id]
        return Response(status_code=204)
    fields = await read_subscription(request)
    if isinstance(fields, Response):
        return fields
    updated = Subscription(subscription.id, ext, **fields)
    pbx.subscriptions[subscription.id] = updated
    return JSONResponse(updated.json())


async def callback(request: Request) -> Response:
    """POST /extension/{id}/callback/: answers with the ids of the call it would start."""
    found = authorised_extension(request)
    if isinstance(found, Response):
        return found
    pbx, ext = found
    try:
        body = await request.json()
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("src_num"), list)
        or not body["src_num"]
        or not isinstance(body.get("dst_num"), str)
    ):
        return message(400, 'Body must be {"src_num": ["..."], "dst_num": "..."}')
    call_id = secrets.token_hex(16)
    answer = {"call_api_id": f"cb-3584709739-{call_id}", "call_id": call_id}
    pbx.callbacks.append({"extension_id": ext, **body, **answer})
    return JSONResponse(answer, status_code=201)


async def state(request: Request) -> Response:
    """GET /emulator/state: the PBX's set-up and subscriptions (the emulator's own route)."""
    pbx = pbx_of(request)
    return JSONResponse(
        {
            "offices": pbx.config.offices,
            "seed": pbx.config.seed,
            "extensions": [dataclasses.asdict(e) for e in pbx.extensions.values()],
            "subscriptions": [
                {**s.json(), "extension_id": s.extension_id} for s in pbx.subscriptions.values()
            ],
            "callbacks": pbx.callbacks,
            "history_calls": len(pbx.history),
            "history_requests": pbx.history_requests,
        }
    )


async def faults(request: Request) -> Response:
    """POST /emulator/faults {"status": 503, "count": 2}: the next API answers fail so."""
    body = await request.json()
    pbx_of(request).faults += [int(body["status"])] * int(body.get("count", 1))
    return Response(status_code=204)


async def call_history(request: Request) -> Response:
    """GET /client/{client_id}/call_history/: a page of records; one request at a time."""
    pbx = authorised(request)
    if isinstance(pbx, Response):
        return pbx
    if request.path_params["client_id"] not in ("@me", CLIENT_NUMBER):
        return message(404, "Client not found")
    try:
        wanted = history_filter(request.query_params)
    except BadQuery as problem:
        return message(400, str(problem))
    if pbx.history_busy:
        return message(429, BUSY_MESSAGE)
    pbx.history_busy = True
    pbx.history_requests += 1
    try:
        await asyncio.sleep(pbx.config.history_delay)  # the PBX's query takes a while
        return JSONResponse(history_page(pbx.history.values(), wanted))
    finally:
        pbx.history_busy = False


def recording_of(request: Request) -> tuple[Pbx, str] | Response:
    """The PBX and the record_uuid of the path; or the answer (fault, 401, 404) instead."""
    pbx = authorised(request)
    if isinstance(pbx, Response):
        return pbx
    record_uuid = request.path_params["record_uuid"]
    if request.path_params["client_id"] not in ("@me", CLIENT_NUMBER):
        return message(404, "Client not found")
    if record_uuid not in pbx.recordings:
        return message(404, "Record not found")
    return pbx, record_uuid


async def record(request: Request) -> Response:
    """GET /client/{client_id}/record/{record_uuid}: the mp3."""
    found = recording_of(request)
    if isinstance(found, Response):
        return found
    return Response(recording_bytes(found[1]), media_type="audio/mpeg")


async def storage_url(request: Request) -> Response:
    """GET /client/{client_id}/record/{record_uuid}/storage_url/: a signed URL, valid a while."""
    found = recording_of(request)
    if isinstance(found, Response):
        return found
    pbx, record_uuid = found
    expires = int(time.time()) + pbx.config.record_url_ttl
    mark = signature(pbx.config.client_secret, record_uuid, expires)
    base = str(request.base_url).rstrip("/")
    url = f"{base}/storage/records/{record_uuid}.mp3?expires={expires}&signature={mark}"
    return JSONResponse({"record_url": url})


async def stored_record(request: Request) -> Response:
    """GET /storage/records/{record_uuid}.mp3?expires=&signature=: no token, a live signature."""
    pbx = pbx_of(request)
    record_uuid = request.path_params["record_uuid"]
    expires = request.query_params.get("expires", "")
    given = request.query_params.get("signature", "")
    if not expires.isdigit() or not hmac.compare_digest(
        given, signature(pbx.config.client_secret, record_uuid, int(expires))
    ):
        return message(403, "Bad signature")
    if int(expires) < time.time():
        return message(403, "Link expired")
    if record_uuid not in pbx.recordings:
        return message(404, "Record not found")
    return Response(recording_bytes(record_uuid), media_type="audio/mpeg")


async def add_history(request: Request) -> Response:
    """POST /emulator/history [records]: calls the simulation has ended, into the history."""
    pbx = pbx_of(request)
    for entry in await request.json():
        pbx.history[entry["call_uuid"]] = entry
        for leg in entry["cdr"]:
            if leg.get("record_uuid"):
                pbx.recordings[leg["record_uuid"]] = entry["call_uuid"]
    return Response(status_code=204)


def create_pbx_app(config: PbxConfig) -> Starlette:
    """The emulator's ASGI app."""
    app = Starlette(
        routes=[
            Route("/oauth/token", oauth_token, methods=["POST"]),
            Route(
                "/extension/{extension_id:int}/event/",
                events_collection,
                methods=["GET", "POST", "DELETE"],
            ),
            Route(
                "/extension/{extension_id:int}/event/{event_id:int}",
                events_item,
                methods=["GET", "PUT", "DELETE"],
            ),
            Route("/extension/{extension_id:int}/callback/", callback, methods=["POST"]),
            Route("/client/{client_id}/call_history/", call_history),
            Route("/client/{client_id}/record/{record_uuid}", record),
            Route("/client/{client_id}/record/{record_uuid}/storage_url/", storage_url),
            Route("/storage/records/{record_uuid}.mp3", stored_record),
            Route("/emulator/state", state),
            Route("/emulator/faults", faults, methods=["POST"]),
            Route("/emulator/history", add_history, methods=["POST"]),
        ]
    )
    app.state.pbx = Pbx(config)
    return app
