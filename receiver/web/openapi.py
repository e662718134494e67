"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

It says exactly what the running server does: its security follows the server's settings, and
every constraint the code enforces on a parameter is in it (tests/test_fuzz.py holds this with
Schemathesis).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from receiver import __version__
from receiver.calls import CallSource, CallStatus, Direction
from receiver.event import EPOCH_SECONDS_PATTERN, REJECT_BODY_KEPT
from receiver.forward.rules import MESSAGE_TYPES
from receiver.parse import FIELDS, MYID_PATTERN
from receiver.settings import Settings
from receiver.store import CALL_CURSOR_PATTERN, EVENT_CURSOR_PATTERN
from receiver.web.session import COOKIE


def nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: every listed property, and no other, required unless `optional`."""
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in optional],
            "additionalProperties": False}  # fmt: skip


TEXT = {"type": "string"}
TIME = nullable("string", format="date-time")  # null: a stored value no date can show
SECONDS = nullable("number")
STRINGS = {"type": "array", "items": TEXT}
INTEGER = {"type": "integer"}


def text_or_base64(name: str) -> dict[str, Any]:
    """`name` as text when it is UTF-8, else `<name>_base64`: exactly one of the two."""
    return {name: TEXT, f"{name}_base64": {"type": "string", "contentEncoding": "base64"}}


def one_of_each(*names: str) -> dict[str, Any]:
    """Each of `names` comes either as text or as base64 (text_or_base64), not both."""
    return {"allOf": [{"oneOf": [{"required": [n]}, {"required": [f"{n}_base64"]}]}
                      for n in names]}  # fmt: skip


EVENT_FIELDS = {
    "id": INTEGER, "myid": TEXT, "event_type": TEXT, "event_time": TIME,
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
    "received_at": TIME, "source": TEXT, "event_time_us": nullable("integer"),
    "duplicates": INTEGER,
}  # fmt: skip
RAW = {**obj({"method": TEXT, **text_or_base64("query"), **text_or_base64("body"),
              "content_type": nullable("string")},
             optional=("query", "query_base64", "body", "body_base64")),
       **one_of_each("query", "body")}  # fmt: skip
CALL_FIELDS = {
    "call_id": TEXT, "myid": TEXT, "myids": STRINGS,
    "direction": {"enum": [d.value for d in Direction]},
    "started_at": TIME, "answered_at": TIME, "ended_at": TIME,
    "ring_seconds": SECONDS, "talk_seconds": SECONDS,
    "status": {"enum": [s.value for s in CallStatus]}, "external_number": nullable("string"),
    "did": nullable("string"), "answered_by": nullable("string"), "extensions": STRINGS,
    "transferred": {"type": "boolean"}, "callback_id": nullable("string"), "recordings": STRINGS,
    "source": {"enum": [s.value for s in CallSource],
               "description": "What the call was built from: `events`, those we received, or "
               "`call_history`, the PBX's call history, for a call none of whose events came "
               "(`receiver reconcile`; its legs are the history's, its events none)."},
}  # fmt: skip
LEG = obj({
    "sub_call_id": TEXT, "extension": nullable("string"), "extension_id": nullable("integer"),
    "direction": nullable("string"), "started_at": TIME, "answered_at": TIME, "ended_at": TIME,
    "ring_seconds": SECONDS, "talk_seconds": SECONDS, "status": nullable("string"),
    "answered": {"type": "boolean"}, "transferred": {"type": "boolean"},
    "bridged": nullable("boolean"), "rec_id": nullable("string"),
})  # fmt: skip
TIMELINE_EVENT = obj({
    "id": INTEGER, "event_time": TIME, "event_type": TEXT, "sub_call_id": nullable("string"),
    "call_status": nullable("string"), "call_flow": nullable("string"), "myid": TEXT,
})  # fmt: skip
DELIVERY = obj({
    "id": INTEGER, "destination": TEXT, "message_id": TEXT,
    "type": {"enum": list(MESSAGE_TYPES)}, "myid": TEXT, "call_id": nullable("string"),
    "event_id": nullable("integer"), "status": {"enum": ["pending", "delivered", "dead"]},
    "attempts": INTEGER, "created_at": TIME, "next_try_at": TIME, "last_try_at": TIME,
    "last_status": nullable("integer"), "last_error": nullable("string"), "delivered_at": TIME,
})  # fmt: skip
FORWARD_HEALTH = obj({"destinations": {"type": "array", "items": obj({
    "url": TEXT, "pending": INTEGER, "dead": INTEGER, "oldest_pending_at": TIME,
    "disabled_at": TIME, "disabled_why": nullable("string"),
    "delivered_since_start": INTEGER, "failed_attempts_since_start": INTEGER,
    "dead_since_start": INTEGER, "in_flight": INTEGER, "last_delivered_at": TIME,
    "last_error": nullable("string"), "last_error_at": TIME})}})  # fmt: skip
REJECT = {**obj({
    "id": INTEGER, "received_at": TIME, "status": INTEGER, "reason": TEXT,
    "myid": nullable("string"), "client": nullable("string"), "method": TEXT,
    **text_or_base64("query"), **text_or_base64("body"),
    "body_size": {"type": "integer", "description": "Bytes of the body received (over "
                  "--max-body: as its Content-Length declared, or as far as it was read)."},
    "body_kept": {"type": "integer", "description": "Bytes of the body kept in `body`: its "
                  f"first {REJECT_BODY_KEPT} at most, a field named token cut out; less than "
                  "body_size when the rest was cut."},
    "content_type": nullable("string"),
}, optional=("query", "query_base64", "body", "body_base64")),
    **one_of_each("query", "body")}  # fmt: skip
CALLS_BUILT = obj({
    "version": {**INTEGER, "description": "The version of call building that built the calls."},
    "expected": {**INTEGER, "description": "This receiver's version of call building."},
    "built_to_event": {**INTEGER, "description": "The calls of every event up to this id are "
                       "built."},
    "events": {**INTEGER, "description": "The newest event's id (0: none)."},
    "rebuilding": {"type": "boolean", "description": "Every call is being built again (another "
                   "version built them, or `receiver rebuild` asked)."},
})  # fmt: skip
RECONCILE_COUNTS = obj(
    {name: INTEGER for name in ("records", "matched", "filled", "known", "differing", "unreadable")}
)
RECONCILE_ROUNDS = {"anyOf": [{"type": "null"}, obj({
    "every_seconds": {**INTEGER, "description": "--reconcile-every, in seconds."},
    "running": {"type": "boolean", "description": "A reconciliation is running now."},
    "last_started": TIME, "last_finished": TIME,
    "last": {"anyOf": [{"type": "null"}, RECONCILE_COUNTS],
             "description": "What the last finished one found: history records read, calls "
             "matched, filled from the history, filled before, differing, unreadable records."},
    "last_error": {**nullable("string"), "description": "Why the last one did not finish."},
})], "description": "The server's reconciliation with the PBX's call history (null without "
    "--reconcile-every)."}  # fmt: skip
SILENT = obj({
    "myid": TEXT, "last_event_at": TIME,
    "silent_seconds": {"type": "number", "description": "Since its newest event."},
})  # fmt: skip
RETENTION = obj({
    "older_than_seconds": {"type": "number", "description": "--retention: events older go."},
    "running": {"type": "boolean", "description": "A prune is running now."},
    "last_finished_at": TIME, "last_removed_events": INTEGER,
})  # fmt: skip
SCHEMAS: dict[str, Any] = {
    "Error": obj({"ok": {"const": False}, "error": TEXT, "status": INTEGER}),
    "Stored": obj({"ok": {"const": True}, "id": INTEGER, "duplicate": {"type": "boolean"}}),
    "Health": obj({"ok": {"const": True}, "schema_version": INTEGER, "expected": INTEGER,
                   "calls": CALLS_BUILT, "reconcile": RECONCILE_ROUNDS,
                   "silent": {"type": "array", "items": SILENT},
                   "retention": {"oneOf": [RETENTION, {"type": "null"}]},
                   "forward": {"oneOf": [FORWARD_HEALTH, {"type": "null"}]}}),
    "Ready": obj({"ok": {"const": True},
                  "disk_free_bytes": nullable("integer", description="Free on the database's "
                                              "disk (null: not known to this receiver)."),
                  "queued": {**INTEGER, "description": "Deliveries waiting for their commit."}}),
    "Event": obj(EVENT_FIELDS),
    "EventWithRaw": obj({**EVENT_FIELDS, "raw": RAW}),
    "EventPage": obj({"events": {"type": "array", "items": ref("Event")},
                      "next": nullable("string")}),
    "Call": obj(CALL_FIELDS),
    "CallDetail": obj({**CALL_FIELDS, "legs": {"type": "array", "items": LEG},
                       "events": {"type": "array", "items": TIMELINE_EVENT}}),
    "CallPage": obj({"calls": {"type": "array", "items": ref("Call")},
                     "next": nullable("string"),
                     "built_to_event": {**INTEGER, "description": "The calls are built from "
                                        "every event up to this id, at least."}}),
    "MissedReport": obj({"numbers": {"type": "array", "items": obj({
        "number": TEXT, "digits": TEXT, "missed": INTEGER,
        "first_missed_at": TIME, "last_missed_at": TIME, "dids": STRINGS,
        "handled": {"type": "boolean"},
        "handled_by": {"enum": ["call_back", "called_again", None]}, "handled_at": TIME,
        "handled_extension": nullable("string"), "recall_seconds": SECONDS})}}),
    "ExtensionsReport": obj({"extensions": {"type": "array", "items": obj({
        "extension": TEXT, "period": TIME, "calls": INTEGER, "answered": INTEGER,
        "missed": INTEGER, "avg_ring_seconds": SECONDS, "total_talk_seconds": {"type": "number"},
        "avg_talk_seconds": SECONDS}, optional=("period",))}}),
    "RejectPage": obj({"rejects": {"type": "array", "items": REJECT},
                       "next": nullable("string")}),
    "DeliveryPage": obj({"deliveries": {"type": "array", "items": DELIVERY},
                         "next": nullable("string")}),
}  # fmt: skip
# A form field is text. A client's library turns a number or true into its text, but a null,
# an empty list or an object it may drop or spell in ways of its own: EventType, which must not
# come out empty, is described as the values every form library writes the same.
FORM_TEXT = {"anyOf": [{"type": "string", "minLength": 1}, {"type": ["number", "boolean"]}]}
PAGE_MAX = 1000  # the most records in one JSON page (a larger `limit` gets this many)
EXPORT_MAX = 2**62  # the most records an NDJSON or CSV export may be asked for
# A live stream's message id, `<event>:<calls>`, sent back as Last-Event-ID (web/stream.py).
LAST_EVENT_ID_PATTERN = r"\d{1,18}(:\d{1,18})?"
TIME_PARAMETER = {"anyOf": [
    {"type": "string", "format": "date-time"}, {"type": "string", "format": "date"},
    {"type": "string", "pattern": f"^{EPOCH_SECONDS_PATTERN}$"}]}  # fmt: skip


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
    {**param("since", "From this time (included): ISO 8601 (UTC when no offset is given) or "
                      "seconds since the epoch."), "schema": TIME_PARAMETER},
    {**param("until", "Before this time, as `since`."), "schema": TIME_PARAMETER},
]  # fmt: skip
LIMIT = param("limit", f"Page size (json: default 100, at most {PAGE_MAX} a page), or the most "
              "records to send (ndjson, csv: default all).", "integer", minimum=1,
              maximum=EXPORT_MAX)  # fmt: skip
FORMAT = param("format", "Response format (or use the Accept header).",
               enum=["json", "ndjson", "csv"])  # fmt: skip
ORDER = param("order", "Time order.", enum=["asc", "desc"])
MYID = {**param("myid", "Only these myids (repeatable).", pattern=f"^{MYID_PATTERN}$"),
        "explode": True}  # fmt: skip
NUMBER = param("number", "A phone number, compared as digits (8916..., +7916... and 7916... "
               "are one number).")  # fmt: skip
EXTENSION = param("extension", "An extension, as prefix*ext.")
STREAMS = ("application/x-ndjson", "text/csv")
EVENT_PARAMETERS = [
    MYID, *TIMES, ORDER, LIMIT,
    param("after", "The `next` value of the previous page.",
          pattern=f"^(?:{EVENT_CURSOR_PATTERN})$"),
    FORMAT, *(param(n, f"Only this {n}.") for n in (
        "event_type", "call_id", "sub_call_id", "call_status", "call_flow", "source")),
    {**NUMBER, "description": "Any of the event's numbers, compared as digits."},
    {**EXTENSION, "description": "The calling or called extension (prefix*ext)."},
]  # fmt: skip
CALL_PARAMETERS = [
    MYID, *TIMES, ORDER, LIMIT,
    param("after", "The `next` value of the previous page.",
          pattern=f"^(?:{CALL_CURSOR_PATTERN})$"),
    FORMAT, param("direction", "Call direction.", enum=[d.value for d in Direction]),
    param("status", "Call status.", enum=[s.value for s in CallStatus]),
    {**NUMBER, "description": "The external number, compared as digits."},
    {**EXTENSION, "description": "An extension the call involved (prefix*ext)."},
]  # fmt: skip
TZ = param("tz", "An IANA time zone: the report's times are given with its offset (UTC "
           "otherwise), its days and hours are its own, and since/until without an offset are "
           "read in it.", enum=sorted(available_timezones()))  # fmt: skip
REPORT_PARAMETERS = [MYID, *TIMES, FORMAT, NUMBER, EXTENSION, TZ]
BY = param("by", "One row per period too: the days or hours of tz=, else of the server's "
           "--timezone (UTC by default).", enum=["day", "hour"])  # fmt: skip
REJECT_PARAMETERS = [
    param("limit", f"Page size, 1-{PAGE_MAX} (default 100).", "integer", minimum=1,
          maximum=PAGE_MAX),
    param("before", "The `next` value of the previous page.", "integer", minimum=1,
          maximum=2**63 - 1),
]  # fmt: skip
DELIVERY_PARAMETERS = [
    param("status", "Only messages of this status.", enum=["pending", "delivered", "dead"]),
    param("destination", "Only messages to this destination URL."),
    param("type", "Only messages of this type.", enum=list(MESSAGE_TYPES)),
    param("call_id", "Only messages of this call."),
    param("event_id", "Only the message of this event.", "integer", minimum=1,
          maximum=2**63 - 1),
    {**param("since", "Only messages written from this time, as /api/events' since."),
     "schema": TIME_PARAMETER},
    *REJECT_PARAMETERS,
]  # fmt: skip
QUERY_PARAMETERS = {
    "/api/events": EVENT_PARAMETERS,
    "/api/events/{id}": [],
    "/api/calls": CALL_PARAMETERS,
    "/api/calls/{call_id}": [],
    "/api/calls/{call_id}/recording": [
        param(
            "rec_id",
            "Which of the call's recordings (one of its `recordings`; default: the first).",
        )
    ],
    "/api/reports/missed": REPORT_PARAMETERS,
    "/api/reports/extensions": [*REPORT_PARAMETERS, BY],
    "/api/rejects": REJECT_PARAMETERS,
    "/api/deliveries": DELIVERY_PARAMETERS,
    "/api/stream": [{**MYID, "description": "Only the events and calls of these myids "
                     "(repeatable)."}],
}  # fmt: skip
PAGE_SESSION = {
    "type": "apiKey", "in": "cookie", "name": COOKIE,
    "description": "The session cookie that the web pages' /login sets, given the API token.",
}  # fmt: skip
LAST_EVENT_ID = {
    "name": "Last-Event-ID", "in": "header",
    "description": "The id of the last message received: the stream starts with what came "
                   "after it (EventSource sends it when it reconnects).",
    "schema": {"type": "string", "pattern": f"^{LAST_EVENT_ID_PATTERN}$"},
}  # fmt: skip
STREAM_ANSWER = {
    "description": "An endless text/event-stream: messages `event` (an event's record) and "
                   "`call` (a call's record, as built again), each with an id to resume from, "
                   "`reset` when a returning client missed too much, and keep-alive comments.",
    "content": {"text/event-stream": {"schema": TEXT}},
}  # fmt: skip


def query_names(path: str) -> frozenset[str]:
    """The query parameters an /api/ path takes: any other is refused."""
    return frozenset(parameter["name"] for parameter in QUERY_PARAMETERS[path])


def webhook_fields(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The webhook's query parameters and its form body's schema, as `settings` make them."""
    own = [
        {**param("myid", "Whose event it is: the subscriber's tag.", pattern=f"^{MYID_PATTERN}$"),
         "required": settings.default_myid is None},
        {**param("token", "The shared secret."), "required": True},
    ]  # fmt: skip
    if not (settings.token or settings.tokens):
        own.pop()
    # Any other field may be any value: the receiver keeps whatever text it gets.
    body = {
        "type": "object",
        "properties": {name: {} for name in FIELDS} | {"EventType": FORM_TEXT},
        "required": ["EventType"],
        # the token is read from the URL only: a body naming it is refused
        "propertyNames": {"not": {"pattern": "^[Tt][Oo][Kk][Ee][Nn]$"}},
    }
    fields: dict[str, dict[str, Any]] = {name: TEXT for name in FIELDS}
    fields["EventType"] = {"type": "string", "minLength": 1}
    event_query = [
        {**param(name, "An event field (any text: one that does not parse is kept as a bad "
                       "value)."), "schema": schema, "required": name == "EventType"}
        for name, schema in fields.items()
    ]  # fmt: skip
    return [*own, *event_query], {"own": own, "body": body}


def secured(operation: dict[str, Any], settings: Settings, path: str) -> dict[str, Any]:
    """An /api/ operation, needing the bearer token when the server has one (401 otherwise),
    or the web pages' session cookie; the stream takes the token as ?token= too."""
    if not settings.api_token:
        return operation
    security: list[dict[str, list[str]]] = [{"api_token": []}, {"page_session": []}]
    if path == "/api/stream":
        security.append({"token_in_query": []})
    return {**operation, "security": security,
            "responses": {**operation["responses"], "401": ERROR}}  # fmt: skip


def api_get(path: str, summary: str, answers: dict[str, Any]) -> dict[str, Any]:
    path_parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in (("id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
                             ("call_id", TEXT))
        if "{" + name + "}" in path
    ]  # fmt: skip
    headers = [LAST_EVENT_ID] if path == "/api/stream" else []
    return {"summary": summary,
            "parameters": [*path_parameters, *QUERY_PARAMETERS[path], *headers],
            "responses": answers}  # fmt: skip


def metrics_operation(settings: Settings) -> dict[str, Any]:
    """GET /metrics: Prometheus' text format; behind the API token unless --metrics-public."""
    operation = {"summary": "Figures for Prometheus, in its text format",
                 "responses": {"200": {"description": "OK", "content": {
                     "text/plain": {"schema": TEXT}}}}}  # fmt: skip
    return operation if settings.metrics_public else secured(operation, settings, "/metrics")


def spec(settings: Settings | None = None) -> dict[str, Any]:
    """The whole description, for a server running with `settings` (their defaults if None)."""
    settings = settings or Settings()
    get_query, post = webhook_fields(settings)
    webhook_answers = {
        "200": answer("Stored", "stored, or a repeat of a stored event (duplicate: true)"),
        **{code: ERROR for code in ("400", "403", "405", "408", "413", "415", "503")},
    }
    components: dict[str, Any] = {"schemas": SCHEMAS}
    if settings.api_token:
        components["securitySchemes"] = {
            "api_token": {"type": "http", "scheme": "bearer"},
            "token_in_query": {"type": "apiKey", "in": "query", "name": "token"},
            "page_session": PAGE_SESSION,
        }
    operations = {
        "/api/events": (
            "Events, filtered, in time order",
            {"200": answer("EventPage", media=STREAMS), "400": ERROR},
        ),
        "/api/events/{id}": (
            "One event with its raw request",
            {"200": answer("EventWithRaw"), "400": ERROR, "404": ERROR},
        ),
        "/api/calls": (
            "Calls rebuilt from their events",
            {"200": answer("CallPage", media=STREAMS), "400": ERROR},
        ),
        "/api/calls/{call_id}": (
            "One call, with legs and event timeline",
            {"200": answer("CallDetail"), "400": ERROR, "404": ERROR},
        ),
        "/api/calls/{call_id}/recording": (
            "A redirect to the call's recording, where the PBX stores it",
            {
                "307": {
                    "description": "to the recording's storage URL (an mp3, no token needed)",
                    "headers": {"Location": {"schema": TEXT}},
                },
                "400": ERROR,
                "404": ERROR,
                "502": ERROR,
                "503": ERROR,
            },
        ),
        "/api/reports/missed": (
            "Missed inbound calls per number, handled or not",
            {"200": answer("MissedReport", media=STREAMS), "400": ERROR},
        ),
        "/api/reports/extensions": (
            "Per extension: calls, answered, missed, ring and talk time",
            {"200": answer("ExtensionsReport", media=STREAMS), "400": ERROR},
        ),
        "/api/rejects": (
            "Refused deliveries, newest first",
            {"200": answer("RejectPage"), "400": ERROR},
        ),
        "/api/deliveries": (
            "Forwarded messages, newest first: status, attempts, last answer, next try",
            {"200": answer("DeliveryPage"), "400": ERROR},
        ),
        "/api/stream": (
            "New events and changed calls, live (Server-Sent Events)",
            {"200": STREAM_ANSWER, "400": ERROR},
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "receiver", "version": __version__,
                 "description": "PBX call-event webhook receiver and its read API."},
        "components": components,
        "paths": {
            "/webhook": {
                "get": {"summary": "Receive one event (fields in the query string)",
                        "parameters": get_query, "responses": webhook_answers},
                "post": {"summary": "Receive one event (fields in a form body)",
                         "parameters": post["own"],
                         "requestBody": {"required": True, "content": {
                             "application/x-www-form-urlencoded": {"schema": post["body"]},
                             "multipart/form-data": {"schema": post["body"]}}},
                         "responses": webhook_answers},
            },
            "/healthz": {"get": {"summary": "Liveness: the process and its database answer",
                                 "responses": {"200": answer("Health"), "503": ERROR}}},
            "/readyz": {"get": {"summary": "Readiness: deliveries can be stored now",
                                "responses": {"200": answer("Ready"), "503": ERROR}}},
            "/metrics": {"get": metrics_operation(settings)},
            "/openapi.json": {"get": {"summary": "This description",
                                      "responses": {"200": {"description": "OK", "content": {
                                          "application/json": {"schema": {"type": "object"}}}}}}},
            **{path: {"get": secured(api_get(path, summary, answers), settings, path)}
               for path, (summary, answers) in operations.items()},
        },
    }  # fmt: skip
