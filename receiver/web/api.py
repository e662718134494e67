"""The read API under /api/: events, calls and reports, as JSON pages or streamed NDJSON/CSV."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from datetime import UTC, tzinfo
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from receiver.calls import CallStatus, Direction, call_json
from receiver.event import now_us, parse_time, reject_json
from receiver.parse import MYID_SHAPE, is_valid_myid
from receiver.record_lines import RecordLines
from receiver.settings import Settings
from receiver.store import CallQuery, EventQuery, Storage, parse_call_cursor, parse_cursor
from receiver.web.openapi import EXPORT_MAX, PAGE_MAX, query_names
from receiver.zones import report_in_zone, zone

CHUNK_LINES = 500
FORMATS = ("json", "ndjson", "csv")
MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def bad(name: str, must: str) -> HTTPException:
    return HTTPException(400, f"parameter {name} {must}")


def known_params(request: Request, path: str, also: tuple[str, ...] = ()) -> None:
    """HTTP 400 naming a query parameter that `path` does not take (a typo would otherwise
    return everything, unfiltered)."""
    allowed = query_names(path) | set(also)
    for name in request.query_params:
        if name not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise HTTPException(400, f"unknown parameter {name}: {path} takes {takes}")


def int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter within [low, high]; HTTP 400 naming it otherwise."""
    value = request.query_params.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise bad(name, f"must be a whole number from {low} to {high}")
    return int(value)


def time_param(request: Request, name: str, place: tzinfo = UTC) -> int | None:
    """since/until: ISO 8601 (in `place` when it gives no offset) or seconds since the epoch
    -> µs."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return parse_time(value, place)
    except ValueError:
        raise bad(
            name,
            "must be ISO 8601 (2026-11-27T09:00:00Z) or seconds since the epoch (at most 12 "
            "digits)",
        ) from None


def choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise bad(name, f"must be one of {', '.join(choices)}")
    return value


def output_format(request: Request) -> str:
    """format=json|ndjson|csv, else from the Accept header, else json."""
    chosen = choice_param(request, "format", FORMATS)
    if chosen:
        return chosen
    accept = request.headers.get("accept", "")
    if "application/x-ndjson" in accept:
        return "ndjson"
    if "text/csv" in accept:
        return "csv"
    return "json"


def myids_param(request: Request) -> tuple[str, ...]:
    myids = tuple(request.query_params.getlist("myid"))
    if not all(is_valid_myid(myid) for myid in myids):
        raise bad("myid", f"must be {MYID_SHAPE}")
    return myids


def limit_param(request: Request, fmt: str) -> int | None:
    """A JSON page's size (default 100, at most PAGE_MAX), or the most records to export."""
    if fmt == "json":
        return min(int_param(request, "limit", 100, 1, EXPORT_MAX) or 100, PAGE_MAX)
    return int_param(request, "limit", None, 1, EXPORT_MAX)


def event_query(request: Request) -> EventQuery:
    known_params(request, "/api/events")
    q = request.query_params
    return EventQuery(
        myids=myids_param(request),
        event_type=q.get("event_type"),
        call_id=q.get("call_id"),
        sub_call_id=q.get("sub_call_id"),
        number=q.get("number"),
        extension=q.get("extension"),
        call_status=q.get("call_status"),
        call_flow=q.get("call_flow"),
        source=q.get("source"),
        since_us=time_param(request, "since"),
        until_us=time_param(request, "until"),
        descending=choice_param(request, "order", ("asc", "desc")) == "desc",
    )


def zone_param(request: Request) -> tzinfo | None:
    """tz=: the zone a report's times are given in (and its days and hours), or None."""
    name = request.query_params.get("tz")
    if name is None:
        return None
    try:
        return zone(name)
    except ValueError:
        raise bad("tz", "must be an IANA time zone name, such as Europe/Moscow or UTC") from None


def call_query(request: Request, path: str, place: tzinfo = UTC) -> CallQuery:
    known_params(request, path)
    q = request.query_params
    settings: Settings = request.app.state.settings
    return CallQuery(
        myids=myids_param(request),
        since_us=time_param(request, "since", place),
        until_us=time_param(request, "until", place),
        direction=choice_param(request, "direction", tuple(Direction)),
        status=choice_param(request, "status", tuple(CallStatus)),
        number=q.get("number"),
        extension=q.get("extension"),
        descending=choice_param(request, "order", ("asc", "desc")) == "desc",
        now_us=now_us(),
        unknown_after_us=settings.unknown_end_after * 1_000_000,
    )


def cursor_param(request: Request, check: Callable[[str], object]) -> str | None:
    after = request.query_params.get("after")
    if after is not None:
        try:
            check(after)
        except ValueError:
            raise bad("after", "must be a 'next' value from an earlier page") from None
    return after


async def stream(records: AsyncIterator[dict[str, Any]], fmt: str) -> AsyncIterator[str]:
    """Records as NDJSON lines, or CSV with a header row taken from the first record.

    Lines go out a few hundred at a time: one HTTP chunk per record costs more than the record.
    """
    buffer = io.StringIO()
    writer = RecordLines(fmt, buffer)
    lines = 0
    async for record in records:
        writer.add(record)
        lines += 1
        if lines % CHUNK_LINES == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


async def limited(records: AsyncIterator[Any], limit: int | None) -> AsyncIterator[Any]:
    count = 0
    async for record in records:
        if limit is not None and count >= limit:
            return
        count += 1
        yield record


async def list_events(request: Request) -> Response:
    """GET /api/events: filtered events in time order; JSON pages, or all as NDJSON/CSV."""
    store: Storage = request.app.state.store
    query = event_query(request)
    after = cursor_param(request, parse_cursor)
    fmt = output_format(request)
    limit = limit_param(request, fmt)
    if fmt == "ndjson":  # the export, with the raw requests
        lines = store.iter_event_lines(query, after=after, limit=limit)
        return StreamingResponse(lines, media_type=MEDIA[fmt])
    if fmt == "csv":
        records = limited(store.iter_event_records(query, after=after), limit)
        return StreamingResponse(stream(records, fmt), media_type=MEDIA[fmt])
    assert limit is not None
    page = await store.list_event_records(query, limit=limit, after=after)
    return JSONResponse({"events": page.items, "next": page.next})


async def get_event(request: Request) -> Response:
    """GET /api/events/{id}: one event with its raw request."""
    known_params(request, "/api/events/{id}")
    store: Storage = request.app.state.store
    record = await store.get_event_record(request.path_params["id"])
    if record is None:
        raise HTTPException(404, f"no event with id {request.path_params['id']}")
    return JSONResponse(record)


async def list_calls(request: Request) -> Response:
    """GET /api/calls: the calls as built from the events, by start time."""
    store: Storage = request.app.state.store
    query = call_query(request, "/api/calls")
    after = cursor_param(request, parse_call_cursor)
    fmt = output_format(request)
    limit = limit_param(request, fmt)
    if fmt != "json":
        records = limited(store.iter_calls(query, after=after), limit)
        return StreamingResponse(stream(records, fmt), media_type=MEDIA[fmt])
    assert limit is not None
    built = await store.calls_state()  # read first: the page is at least this current
    page = await store.list_calls(query, limit=limit, after=after)
    return JSONResponse(
        {"calls": page.items, "next": page.next, "built_to_event": built.built_to_event}
    )


async def get_call(request: Request) -> Response:
    """GET /api/calls/{call_id}: one call as built, with its legs and event timeline."""
    store: Storage = request.app.state.store
    known_params(request, "/api/calls/{call_id}")
    settings: Settings = request.app.state.settings
    call_id = request.path_params["call_id"]
    call = await store.get_call(
        call_id, now_us=now_us(), unknown_after_us=settings.unknown_end_after * 1_000_000
    )
    if call is None:
        raise HTTPException(404, f"no call with call_id {call_id}")
    return JSONResponse(call_json(call))


async def report(
    request: Request, rows: list[dict[str, Any]], key: str, place: tzinfo | None
) -> Response:
    """A report's rows as asked: JSON or streamed; its times in the zone of tz=, if given."""
    if place is not None:
        report_in_zone(rows, place)
    fmt = output_format(request)
    if fmt == "json":
        return JSONResponse({key: rows})

    async def records() -> AsyncIterator[dict[str, Any]]:
        for row in rows:
            yield row

    return StreamingResponse(stream(records(), fmt), media_type=MEDIA[fmt])


async def missed_report(request: Request) -> Response:
    """GET /api/reports/missed: missed inbound calls per number, handled or not."""
    store: Storage = request.app.state.store
    place = zone_param(request)
    query = call_query(request, "/api/reports/missed", place or UTC)
    return await report(request, await store.missed_report(query), "numbers", place)


async def extensions_report(request: Request) -> Response:
    """GET /api/reports/extensions: per extension (and day or hour) call figures; the days and
    hours of tz=, else of --timezone."""
    store: Storage = request.app.state.store
    settings: Settings = request.app.state.settings
    place = zone_param(request)
    query = call_query(request, "/api/reports/extensions", place or UTC)
    by = choice_param(request, "by", ("day", "hour"))
    rows = await store.extensions_report(query, by=by, place=place or zone(settings.timezone))
    return await report(request, rows, "extensions", place)


async def list_rejects(request: Request) -> Response:
    """GET /api/rejects: refused deliveries, newest first."""
    known_params(request, "/api/rejects")
    store: Storage = request.app.state.store
    limit = int_param(request, "limit", 100, 1, PAGE_MAX)
    before = int_param(request, "before", None, 1, 2**63 - 1)
    assert limit is not None
    page = await store.list_rejects(limit=limit, before=before)
    return JSONResponse({"rejects": [reject_json(r) for r in page.items], "next": page.next})
