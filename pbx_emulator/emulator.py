"""A stand-in for the PBX's REST API (pbx-events §5), for tests and demos.

It speaks OAuth2 client credentials, the event-subscription resource and the callback request,
with the same status codes and `{"message": ...}` errors. Its extensions come from
pbx_emulator/simulate.py (offices with phones, an IVR and a queue). Two routes of its own, under
/emulator/, let `receiver-pbx simulate` read the subscriptions and tests inject failures.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import secrets
import time
from typing import IO, Any

import httpx2 as httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pbx_emulator.simulate import calls as simulated_calls
from pbx_emulator.simulate import make_offices, query_string
from receiver.event import EventType, now_us

EVENT_TYPES = [t.value for t in EventType]


@dataclasses.dataclass
class PbxConfig:
    client_id: str = "demo"
    client_secret: str = "demo-secret"
    offices: int = 2
    seed: int = 1
    token_ttl: int = 3600  # seconds an access token lives
    subscription_limit: int = 200  # per client, as the provider limits them


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
        }
    )


async def faults(request: Request) -> Response:
    """POST /emulator/faults {"status": 503, "count": 2}: the next API answers fail so."""
    body = await request.json()
    pbx_of(request).faults += [int(body["status"])] * int(body.get("count", 1))
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
            Route("/emulator/state", state),
            Route("/emulator/faults", faults, methods=["POST"]),
        ]
    )
    app.state.pbx = Pbx(config)
    return app


@dataclasses.dataclass
class SimulationReport:
    """What `receiver-pbx simulate` did."""

    calls: int = 0
    events: int = 0
    deliveries: int = 0  # events times the subscriptions that wanted them
    delivered: int = 0  # answered 2xx
    failed: list[str] = dataclasses.field(default_factory=list)


def run_simulation(
    pbx_url: str,
    *,
    calls: int,
    rate: float,
    speed: float,
    seed: int,
    mix: dict[str, int] | None = None,
    truth: IO[str] | None = None,
) -> SimulationReport:
    """Place `calls` calls on the emulated PBX and deliver their events as the PBX would.

    Every event goes to each subscription of its extension for its event type, with the
    subscription's method, once (the PBX does not retry). `speed` 1 plays in real time, 60 a
    minute a second, 0 as fast as it can. One line of ground truth per call goes to `truth`.
    """
    with httpx.Client(timeout=30) as http:
        setup = http.get(f"{pbx_url.rstrip('/')}/emulator/state").json()
        offices = make_offices(setup["offices"], setup["seed"])
        wanted: dict[tuple[int, str], list[tuple[str, str]]] = {}
        for sub in setup["subscriptions"]:
            wanted.setdefault((sub["extension_id"], sub["event_type"]), []).append(
                (sub["url"], sub["method"])
            )
        start_us = now_us()
        gap = 1_000_000 / rate
        made = itertools.islice(
            simulated_calls(
                offices,
                seed=seed,
                start_us=start_us,
                mix=mix,
                every_us=(int(gap * 0.5), int(gap * 1.5)),
            ),
            calls,
        )
        report = SimulationReport()
        schedule = []
        for sim_call in made:
            report.calls += 1
            if truth is not None:
                truth.write(json.dumps(sim_call.truth, ensure_ascii=False) + "\n")
            schedule += [(int(f["EventTime"]), owner, f) for owner, f in sim_call.events]
        schedule.sort(key=lambda item: item[0])
        started = time.monotonic()
        for at_us, owner, fields in schedule:
            report.events += 1
            if speed:
                time.sleep(max(0.0, started + (at_us - start_us) / 1e6 / speed - time.monotonic()))
            for url, method in wanted.get((owner, fields["EventType"]), []):
                report.deliveries += 1
                deliver(http, url, method, query_string(fields), report)
    return report


def deliver(
    http: httpx.Client, url: str, method: str, payload: str, report: SimulationReport
) -> None:
    """One delivery, as the PBX makes it: the fields in the query (GET) or a form body (POST)."""
    try:
        if method == "GET":
            response = http.get(f"{url}{'&' if '?' in url else '?'}{payload}")
        else:
            form = {"content-type": "application/x-www-form-urlencoded"}
            response = http.post(url, content=payload, headers=form)
    except httpx.TransportError as error:
        report.failed.append(f"{method} {url}: {error}")
        return
    if response.is_success:
        report.delivered += 1
    else:
        report.failed.append(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
