"""/openapi.json describes every route, and real responses match its schemas."""

from __future__ import annotations

import jsonschema
import pytest
from starlette.routing import Mount

from receiver.settings import Settings
from receiver.web.openapi import spec
from receiver.web.pages import page_routes
from tests.conftest import wait_for_calls
from tests.test_api import SCENARIOS, lines

SPEC = spec()


def routes(app) -> set[str]:  # type: ignore[no-untyped-def]
    found = set()
    pages = {route.path for route in page_routes(Settings())}  # HTML for people, not the API
    for route in app.routes:
        if route.path in pages:
            continue
        if isinstance(route, Mount):
            found |= {route.path + sub.path for sub in route.routes}
        else:
            found.add(route.path)
    return {path.replace("{id:int}", "{id}") for path in found}


def check(response, schema: str) -> None:  # type: ignore[no-untyped-def]
    document = {"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]}
    jsonschema.Draft202012Validator(document).validate(response.json())


@pytest.fixture
def loaded(client):  # type: ignore[no-untyped-def]
    for name, myid in SCENARIOS.items():
        for line in lines(name):
            client.get(f"/webhook?myid={myid}&{line}")
    wait_for_calls(client.get)
    return client


def test_every_route_is_described(client) -> None:  # type: ignore[no-untyped-def]
    assert routes(client.app.app) | {client.app.path} == set(SPEC["paths"])
    assert client.get("/openapi.json").json() == SPEC
    jsonschema.Draft202012Validator.check_schema({"components": SPEC["components"]})


def test_real_responses_match(loaded) -> None:  # type: ignore[no-untyped-def]
    check(loaded.get(f"/webhook?myid=1&{lines('callback')[0]}"), "Stored")
    check(loaded.get("/webhook?EventType=x"), "Error")
    check(loaded.post("/webhook?myid=1", content=b"{}", headers={"content-type": "text/json"}),
          "Error")  # fmt: skip
    check(loaded.get("/healthz"), "Health")
    check(loaded.get("/readyz"), "Ready")
    check(loaded.get("/api/events?limit=5"), "EventPage")
    check(loaded.get("/api/events/1"), "EventWithRaw")
    calls = loaded.get("/api/calls")
    check(calls, "CallPage")
    for call in calls.json()["calls"]:
        check(loaded.get(f"/api/calls/{call['call_id']}"), "CallDetail")
    check(loaded.get("/api/reports/missed"), "MissedReport")
    check(loaded.get("/api/reports/extensions?by=hour"), "ExtensionsReport")
    check(loaded.get("/api/rejects"), "RejectPage")
    check(loaded.get("/api/calls?status=nope"), "Error")


@pytest.mark.parametrize("path", ["/api/events", "/api/calls", "/api/reports/extensions"])
def test_every_described_choice_is_accepted(loaded, path: str) -> None:  # type: ignore[no-untyped-def]
    for parameter in SPEC["paths"][path]["get"]["parameters"]:
        for value in parameter["schema"].get("enum", []):
            response = loaded.get(path, params={parameter["name"]: value})
            assert response.status_code == 200, (parameter["name"], value, response.text)
