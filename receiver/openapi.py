"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from receiver import __version__
from receiver.calls import CallStatus, Direction
from receiver.event import REJECT_BODY_KEPT


def nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], *, extra: bool = True) -> dict[str, Any]:
    """An object with every listed property required."""
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": extra}  # fmt: skip


TEXT = {"type": "string"}
TIME = nullable("string", format="date-time")
SECONDS = nullable("number")
STRINGS = {"type": "array", "items": TEXT}

EVENT = obj({
    "id": {"type": "integer"}, "myid": TEXT, "event_type": TEXT, "event_time": TIME,
    "call_id": nullable("string"), "sub_call_id": nullable("string"),
    "call_api_id": nullable("string"), "callback_id": nullable("string"),
    "caller_id_num": nullable("string"), "caller_id_name": nullable("string"),
    "called_did": nullable("string"), "called_number": nullable("string"),
    "caller_extension": nullable("string"), "caller_extension_id": nullable("integer"),
    "called_extension": nullable("string"), "called_extension_id": nullable("integer"),
    "call_status": nullable("string"), "call_flow": nullable("string"), "duration": SECONDS,
    "rec_id": nullable("string"), "transferred": {"type": "boolean"},
    "bridged": nullable("boolean"), "diversion": nullable("string"),
    "remote_number": nullable("string"), "extra": {"type": "object"}, "flags": STRINGS,
    "received_at": {"type": "string", "format": "date-time"}, "source": TEXT,
    "event_time_us": nullable("integer"), "duplicates": {"type": "integer"},
})  # fmt: skip
RAW = obj({"method": TEXT, "content_type": nullable("string")})
CALL = obj({
    "call_id": TEXT, "myid": TEXT, "myids": STRINGS,
    "direction": {"enum": [d.value for d in Direction]},
    "started_at": {"type": "string", "format": "date-time"}, "answered_at": TIME,
    "ended_at": TIME, "ring_seconds": SECONDS, "talk_seconds": SECONDS,
    "status": {"enum": [s.value for s in CallStatus]}, "external_number": nullable("string"),
    "did": nullable("string"), "answered_by": nullable("string"), "extensions": STRINGS,
    "transferred": {"type": "boolean"}, "callback_id": nullable("string"), "recordings": STRINGS,
})  # fmt: skip
LEG = obj({
    "sub_call_id": TEXT, "extension": nullable("string"), "extension_id": nullable("integer"),
    "direction": nullable("string"), "started_at": TIME, "answered_at": TIME, "ended_at": TIME,
    "ring_seconds": SECONDS, "talk_seconds": SECONDS, "status": nullable("string"),
    "answered": {"type": "boolean"}, "transferred": {"type": "boolean"},
    "bridged": nullable("boolean"), "rec_id": nullable("string"),
})  # fmt: skip
SCHEMAS: dict[str, Any] = {
    "Error": obj({"ok": {"const": False}, "error": TEXT, "status": {"type": "integer"}},
                 extra=False),
    "Stored": obj({"ok": {"const": True}, "id": {"type": "integer"},
                   "duplicate": {"type": "boolean"}}, extra=False),
    "Health": obj({"ok": {"const": True}, "schema_version": {"type": "integer"}}),
    "Event": EVENT,
    "EventWithRaw": {"allOf": [ref("Event"), obj({"raw": RAW})]},
    "EventPage": obj({"events": {"type": "array", "items": ref("Event")},
                      "next": nullable("string")}, extra=False),
    "Call": CALL,
    "CallDetail": {"allOf": [ref("Call"), obj({
        "legs": {"type": "array", "items": LEG}, "events": {"type": "array"}})]},
    "CallPage": obj({"calls": {"type": "array", "items": ref("Call")},
                     "next": nullable("string")}, extra=False),
    "MissedReport": obj({"numbers": {"type": "array", "items": obj({
        "number": TEXT, "digits": TEXT, "missed": {"type": "integer"},
        "first_missed_at": TIME, "last_missed_at": TIME, "dids": STRINGS,
        "handled": {"type": "boolean"},
        "handled_by": {"enum": ["call_back", "called_again", None]}, "handled_at": TIME,
        "handled_extension": nullable("string"), "recall_seconds": SECONDS})}}),
    "ExtensionsReport": obj({"extensions": {"type": "array", "items": {
        "type": "object", "required": ["extension", "calls", "answered", "missed"],
        "properties": {"extension": TEXT, "period": TIME, "calls": {"type": "integer"},
                       "answered": {"type": "integer"}, "missed": {"type": "integer"},
                       "avg_ring_seconds": SECONDS, "total_talk_seconds": {"type": "number"},
                       "avg_talk_seconds": SECONDS}}}}),
    "RejectPage": obj({"rejects": {"type": "array", "items": obj({
        "id": {"type": "integer"}, "received_at": TIME, "status": {"type": "integer"},
        "reason": TEXT, "myid": nullable("string"), "method": TEXT,
        "body_size": {"type": "integer", "description": "Bytes of the body received (over "
                      "--max-body: as its Content-Length declared, or as far as it was read)."},
        "body_kept": {"type": "integer", "description": "Bytes of the body kept in `body`: its "
                      f"first {REJECT_BODY_KEPT} at most, a field named token cut out; less than "
                      "body_size when the rest was cut."}})}, "next": nullable("string")}),
}  # fmt: skip


def param(name: str, description: str, kind: str = "string", **more: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description,
            "schema": {"type": kind, **more}}  # fmt: skip


def answer(schema: str, description: str = "OK", media: tuple[str, ...] = ()) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": ref(schema)}}
    for kind in media:
        content[kind] = {"schema": TEXT}
    return {"description": description, "content": content}


ERROR = {"description": "error", "content": {"application/json": {"schema": ref("Error")}}}
TIMES = [
    param("since", "From this time (included): ISO 8601 or seconds since the epoch."),
    param("until", "Before this time: ISO 8601 or seconds since the epoch."),
]
PAGING = [
    param("order", "Time order.", enum=["asc", "desc"]),
    param("limit", "Page size (json, 1-1000), or the most records (ndjson, csv).", "integer"),
    param("after", "The `next` value of the previous page."),
    param("format", "Response format (or use the Accept header).", enum=["json", "ndjson", "csv"]),
]
MYID = {**param("myid", "Only these myids (repeatable)."), "explode": True}
STREAMS = ("application/x-ndjson", "text/csv")
WEBHOOK_ANSWERS = {
    "200": answer("Stored", "stored, or a repeat of a stored event (duplicate: true)"),
    **{code: ERROR for code in ("400", "403", "405", "413", "415", "503")},
}
WEBHOOK_QUERY = [
    {**param("myid", "Whose event it is (required unless --default-myid)."), "required": False},
    param("token", "The shared secret, when the receiver has one."),
]


def spec() -> dict[str, Any]:
    """The whole description."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "receiver", "version": __version__,
                 "description": "PBX call-event webhook receiver and its read API."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"api_token": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/webhook": {
                "get": {"summary": "Receive one event (fields in the query string)",
                        "parameters": WEBHOOK_QUERY, "responses": WEBHOOK_ANSWERS},
                "post": {"summary": "Receive one event (fields in a form body)",
                         "parameters": WEBHOOK_QUERY,
                         "requestBody": {"content": {
                             "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                             "multipart/form-data": {"schema": {"type": "object"}}}},
                         "responses": WEBHOOK_ANSWERS},
            },
            "/healthz": {"get": {"summary": "The database answers",
                                 "responses": {"200": answer("Health"), "503": ERROR}}},
            "/openapi.json": {"get": {"summary": "This description",
                                      "responses": {"200": {"description": "OK"}}}},
            "/api/events": {"get": {
                "summary": "Events, filtered, in time order", "security": [{"api_token": []}],
                "parameters": [MYID, *TIMES, *PAGING, *(param(n, f"Only this {n}.") for n in (
                    "event_type", "call_id", "sub_call_id", "call_status", "call_flow",
                    "source")),
                    param("number", "Any of the event's numbers, compared as digits."),
                    param("extension", "The calling or called extension (prefix*ext).")],
                "responses": {"200": answer("EventPage", media=STREAMS), "400": ERROR,
                              "401": ERROR}}},
            "/api/events/{id}": {"get": {
                "summary": "One event with its raw request", "security": [{"api_token": []}],
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer"}}],
                "responses": {"200": answer("EventWithRaw"), "401": ERROR, "404": ERROR}}},
            "/api/calls": {"get": {
                "summary": "Calls rebuilt from their events", "security": [{"api_token": []}],
                "parameters": [MYID, *TIMES, *PAGING,
                    param("direction", "Call direction.", enum=[d.value for d in Direction]),
                    param("status", "Call status.", enum=[s.value for s in CallStatus]),
                    param("number", "The external number, compared as digits."),
                    param("extension", "An extension the call involved (prefix*ext).")],
                "responses": {"200": answer("CallPage", media=STREAMS), "400": ERROR,
                              "401": ERROR}}},
            "/api/calls/{call_id}": {"get": {
                "summary": "One call, with legs and event timeline",
                "security": [{"api_token": []}],
                "parameters": [{"name": "call_id", "in": "path", "required": True,
                                "schema": TEXT}],
                "responses": {"200": answer("CallDetail"), "401": ERROR, "404": ERROR}}},
            "/api/reports/missed": {"get": {
                "summary": "Missed inbound calls per number, handled or not",
                "security": [{"api_token": []}],
                "parameters": [MYID, *TIMES, PAGING[3], param("number", "One number."),
                               param("extension", "One extension.")],
                "responses": {"200": answer("MissedReport", media=STREAMS), "400": ERROR,
                              "401": ERROR}}},
            "/api/reports/extensions": {"get": {
                "summary": "Per extension: calls, answered, missed, ring and talk time",
                "security": [{"api_token": []}],
                "parameters": [MYID, *TIMES, PAGING[3],
                               param("by", "One row per period too (UTC).", enum=["day", "hour"]),
                               param("number", "One number."),
                               param("extension", "One extension.")],
                "responses": {"200": answer("ExtensionsReport", media=STREAMS), "400": ERROR,
                              "401": ERROR}}},
            "/api/rejects": {"get": {
                "summary": "Refused deliveries, newest first", "security": [{"api_token": []}],
                "parameters": [param("limit", "Page size, 1-1000.", "integer"),
                               param("before", "The `next` value of the previous page.",
                                     "integer")],
                "responses": {"200": answer("RejectPage"), "400": ERROR, "401": ERROR}}},
        },
    }  # fmt: skip
