"""The web pages: a dashboard, calls, a call, missed calls, extensions, events and rejects.

Rendered on the server from templates/ (Jinja2), read through the same Storage as the API;
static/live.js updates them from /api/stream without a reload.
"""

from __future__ import annotations

import functools
import hmac
from collections import Counter
from collections.abc import Callable
from datetime import date, tzinfo
from typing import Any

import jinja2
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from receiver.calls import CallStatus, Direction, call_json
from receiver.event import iso_time, now_us, parse_time, reject_json
from receiver.parse import is_valid_myid
from receiver.settings import Settings
from receiver.store import CallQuery, EventQuery, Storage, parse_call_cursor, parse_cursor
from receiver.web import charts, present
from receiver.web.openapi import spec
from receiver.web.present import NONE, query_string
from receiver.web.session import PageSession, SignInLimit, safe_next, signed_in, signed_out
from receiver.zones import DAY_US, HOUR_US, day_start, zone

PAGE = 50  # rows of a table page
WAITING_SHOWN = 15  # missed numbers on the dashboard
LOGIN_BODY_MAX = 8192  # the sign-in form's body: a token and a path
WEEK_US = 7 * DAY_US
OTHER = {"busy", "no_answer", "cancelled", "failed", "unknown_end"}  # the bars' "other"


def environment(settings: Settings) -> Jinja2Templates:
    """The templates, with the filters that show values in this server's zone and masking."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("receiver.web", "templates"),
        autoescape=True,
    )
    place = zone(settings.timezone)
    mask = settings.mask_numbers
    env.filters.update(
        clock=lambda value, today=None: present.clock(value, place, today),
        duration=present.duration,
        waited=present.waited,
        status=present.status_label,
        phone=(lambda n: present.mask_number(n) or NONE) if mask else (lambda n: n or NONE),
        raw_text=present.mask_numbers_in if mask else (lambda text: text),
        ext=present.extension_name,
        short=present.short_id,
        qs=query_string,
    )
    env.globals.update(zone_name=settings.timezone, masked=mask, signed=bool(settings.api_token))
    return Jinja2Templates(env=env)


class View:
    """What every page handler needs: the store, the settings, the zone, now."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.store: Storage = request.app.state.store
        self.settings: Settings = request.app.state.settings
        self.place: tzinfo = zone(self.settings.timezone)
        self.now = now_us()
        self.today = present.moment(self.now, self.place)
        self.errors: list[str] = []
        self.params = request.query_params

    @property
    def unknown_after_us(self) -> int:
        return self.settings.unknown_end_after * 1_000_000

    def render(self, name: str, page: str, status: int = 200, **context: Any) -> Response:
        templates: Jinja2Templates = self.request.app.state.templates
        context.update(page=page, now_iso=iso_time(self.now), today=self.today, errors=self.errors)
        return templates.TemplateResponse(self.request, name, context, status_code=status)

    def text(self, name: str) -> str | None:
        value = self.params.get(name, "").strip()
        return value or None

    def time(self, name: str) -> int | None:
        """A time of a filter form (`2025-12-01T09:00`, on the zone's clock)."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return parse_time(value, self.place)
        except ValueError:
            self.errors.append(f"{name}: {value!r} is not a time (2025-12-01T09:00)")
            return None

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is not None and value not in choices:
            self.errors.append(f"{name} must be one of {', '.join(choices)}")
            return None
        return value

    def myids(self) -> tuple[str, ...]:
        myids = tuple(m.strip() for m in self.params.getlist("myid") if m.strip())
        bad = [m for m in myids if not is_valid_myid(m)]
        if bad:
            self.errors.append(f"myid {bad[0]!r} is not a myid")
            return ()
        return myids

    def cursor(self, parse: Any) -> str | None:
        after = self.text("after")
        if after is not None:
            try:
                parse(after)
            except ValueError:
                self.errors.append("that page no longer exists: start from the first")
                return None
        return after

    def local_input(self, us: int | None) -> str:
        """µs as a datetime-local field's value on the zone's clock."""
        shown = present.moment(us, self.place)
        return shown.strftime("%Y-%m-%dT%H:%M") if shown else ""

    def call_query(self, **fixed: Any) -> CallQuery:
        values: dict[str, Any] = {
            "myids": self.myids(),
            "since_us": self.time("since"),
            "until_us": self.time("until"),
            "direction": self.choice("direction", tuple(Direction)),
            "status": self.choice("status", tuple(CallStatus)),
            "number": self.text("number"),
            "extension": self.text("extension"),
            "descending": self.text("order") != "asc",
        }
        values.update(fixed)
        return CallQuery(**values, now_us=self.now, unknown_after_us=self.unknown_after_us)


def bar_counts(statuses: dict[str, int]) -> dict[str, int]:
    """A period's calls as the bars' parts (in progress counts as other)."""
    return {
        "answered": statuses.get("answered", 0),
        "missed": statuses.get("missed", 0),
        "other": sum(n for s, n in statuses.items() if s not in ("answered", "missed")),
    }


async def dashboard(request: Request) -> Response:
    """/: today's calls (or another day's: ?day=2025-12-01), by hour, the missed numbers to
    ring back and the calls in progress."""
    view = View(request)
    today = day_start(view.place, view.now)
    asked = view.text("day")
    if asked is not None:
        try:
            today = parse_time(date.fromisoformat(asked).isoformat(), view.place)
        except ValueError:
            view.errors.append(f"day: {asked!r} is not a date (2025-12-01)")
    tomorrow = day_start(view.place, today + DAY_US + 2 * HOUR_US)  # 23 to 25 hours on
    query = CallQuery(since_us=today, until_us=tomorrow, now_us=view.now,
                      unknown_after_us=view.unknown_after_us)  # fmt: skip
    periods = await view.store.calls_by_period(query, by="hour", place=view.place)
    totals: Counter[str] = Counter()
    by_hour: dict[int, Counter[str]] = {}
    for row in periods:
        totals[row["status"]] += row["calls"]
        by_hour.setdefault(row["period_us"], Counter())[row["status"]] += row["calls"]
    hours: list[tuple[str, dict[str, int]]] = []
    start = today
    while start < tomorrow:
        label = present.moment(start, view.place)
        if label is None:
            break
        hours.append((label.strftime("%H"), bar_counts(dict(by_hour.get(start, {})))))
        start += HOUR_US
    missed, waiting = await view.store.waiting_numbers(query, limit=WAITING_SHOWN)
    for row in missed:
        row["waiting"] = waited_seconds(view.now, row["last_missed_at"])
    live = await view.store.list_calls(
        CallQuery(
            status="in_progress",
            since_us=view.now - view.unknown_after_us,
            descending=True,
            now_us=view.now,
            unknown_after_us=view.unknown_after_us,
        ),
        limit=PAGE,
    )
    return view.render(
        "dashboard.html",
        "dashboard",
        totals={
            "calls": sum(totals.values()),
            "answered": totals["answered"],
            "missed": totals["missed"],
            "in_progress": totals["in_progress"],
            "other": sum(n for s, n in totals.items() if s in OTHER),
        },
        chart=charts.bar_chart(hours, label_every=3),
        day=present.moment(today, view.place),
        is_today=today == day_start(view.place, view.now),
        day_range=query_string(
            {"since": view.local_input(today), "until": view.local_input(tomorrow)}
        ),
        missed=missed,
        more_waiting=waiting - len(missed),  # the most recent shown; /missed has them all
        live=live.items,
    )


async def calls_page(request: Request) -> Response:
    """/calls: the calls, filtered as the API filters them, a page at a time."""
    view = View(request)
    fixed: dict[str, Any] = {}
    same = view.text("same_number_as")  # a call's number without putting it in the URL
    if same is not None:
        call = await view.store.get_call(same, now_us=view.now)
        fixed["number"] = call.external_number if call and call.external_number else "-"
    query = view.call_query(**fixed)
    after = view.cursor(parse_call_cursor)
    page = await view.store.list_calls(query, limit=PAGE, after=after)
    form = {
        "since": view.text("since") or "",
        "until": view.text("until") or "",
        "direction": query.direction or "",
        "status": query.status or "",
        "number": view.text("number") or "",
        "extension": query.extension or "",
        "myid": " ".join(query.myids),
        "same_number_as": same or "",
        "order": "asc" if not query.descending else "",
    }
    api = {
        "myid": list(query.myids),
        "since": iso_time(query.since_us),
        "until": iso_time(query.until_us),
        "direction": query.direction,
        "status": query.status,
        "number": query.number,
        "extension": query.extension,
        "order": "desc" if query.descending else "asc",
    }
    return view.render(
        "calls.html",
        "calls",
        calls=page.items,
        next=page.next,
        first_page=after is None,
        form=form,
        api_query=query_string(api),
        directions=list(Direction),
        statuses=list(CallStatus),
        numbers_hidden=same is not None,
    )


async def call_page(request: Request) -> Response:
    """/calls/{call_id}: one call, its legs on a time line, its events with raw requests."""
    view = View(request)
    call_id = request.path_params["call_id"]
    call = await view.store.get_call(
        call_id, now_us=view.now, unknown_after_us=view.unknown_after_us
    )
    if call is None:
        return view.render("missing.html", "calls", status=404, what=f"No call {call_id}.")
    record = call_json(call)
    raws = {}
    for event in record["events"]:
        stored = await view.store.get_event_record(event["id"])
        if stored is not None:
            raws[event["id"]] = stored
    names = [present.extension_name(leg["extension"]) for leg in record["legs"]]
    return view.render(
        "call.html",
        "calls",
        call=record,
        timeline=charts.timeline(record, iso_time(view.now) or "", names),
        events=[raws.get(e["id"], e) for e in record["events"]],
    )


def range_form(view: View, default_days: int = 7) -> tuple[int | None, int | None, dict[str, str]]:
    """A report's time range: the form's, or the last `default_days` local days."""
    since, until = view.time("since"), view.time("until")
    if view.text("since") is None:
        since = day_start(view.place, view.now - (default_days - 1) * DAY_US)
    return since, until, {"since": view.local_input(since), "until": view.text("until") or ""}


def waited_seconds(now_us: int, last_missed_at: str | None) -> float | None:
    """How long a number has waited since its last missed call; None where that time is not
    known (a call whose start does not read: a calls table edited by hand or damaged)."""
    return None if last_missed_at is None else (now_us - parse_time(last_missed_at)) / 1e6


async def missed_page(request: Request) -> Response:
    """/missed: missed numbers, whether and when they were called back, and by whom."""
    view = View(request)
    since, until, form = range_form(view)
    query = view.call_query(since_us=since, until_us=until, direction=None, status=None)
    rows = await view.store.missed_report(query)
    for row in rows:
        row["waiting"] = waited_seconds(view.now, row["last_missed_at"])
    return view.render("missed.html", "missed", rows=rows, form=form)


async def extensions_page(request: Request) -> Response:
    """/extensions: per extension and day, calls, answered, missed, ring and talk time."""
    view = View(request)
    since, until, form = range_form(view)
    query = view.call_query(since_us=since, until_us=until, direction=None, status=None)
    rows = await view.store.extensions_report(query, by="day", place=view.place)
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = totals.setdefault(row["extension"], {"answered": 0, "missed": 0, "other": 0})
        counts["answered"] += row["answered"]
        counts["missed"] += row["missed"]
        counts["other"] += max(0, row["calls"] - row["answered"] - row["missed"])
    columns = [(present.extension_name(ext), counts) for ext, counts in totals.items()]
    return view.render(
        "extensions.html",
        "extensions",
        rows=rows,
        form=form,
        chart=charts.bar_chart(columns) if columns else None,
    )


async def events_page(request: Request) -> Response:
    """/events: the events as received, newest first, each with its raw request."""
    view = View(request)
    query = EventQuery(
        myids=view.myids(),
        event_type=view.text("event_type"),
        call_id=view.text("call_id"),
        number=view.text("number"),
        extension=view.text("extension"),
        since_us=view.time("since"),
        until_us=view.time("until"),
        descending=True,
    )
    after = view.cursor(parse_cursor)
    page = await view.store.list_event_records(query, limit=PAGE, after=after)
    events = []
    for event in page.items:
        events.append(await view.store.get_event_record(event["id"]) or event)
    form = {name: view.text(name) or "" for name in
            ("event_type", "call_id", "number", "extension", "since", "until")}  # fmt: skip
    form["myid"] = " ".join(query.myids)
    return view.render(
        "events.html", "events", events=events, next=page.next, first_page=after is None, form=form
    )


async def rejects_page(request: Request) -> Response:
    """/rejects: refused deliveries, newest first, with what was sent and why it was refused."""
    view = View(request)
    before = view.text("before")
    page = await view.store.list_rejects(
        limit=PAGE, before=int(before) if before and before.isdigit() and len(before) < 19 else None
    )
    return view.render(
        "rejects.html", "rejects", rejects=[reject_json(r) for r in page.items], next=page.next
    )


async def login(limit: SignInLimit, request: Request) -> Response:
    """/login: the API token, asked once; a cookie keeps the session. A client that gives
    wrong tokens too often is refused for a while (429, Retry-After)."""
    settings: Settings = request.app.state.settings
    view = View(request)
    target = safe_next(request.query_params.get("next"))
    if settings.api_token is None:
        return RedirectResponse(target, status_code=303)  # the pages are open
    if request.method == "POST":
        client = request.client.host if request.client else "unknown"
        wait = limit.retry_after(client)
        if wait:
            view.errors.append(f"Too many wrong tokens from this address: try again in {wait} s.")
            refused = view.render("login.html", "login", status=429, target=target)
            refused.headers["Retry-After"] = str(wait)
            return refused
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > LOGIN_BODY_MAX:
            view.errors.append("Send the sign-in form as it is (a short form body).")
            return view.render("login.html", "login", status=413, target=target)
        form = await request.form()
        given = str(form.get("token", ""))
        target = safe_next(str(form.get("next", "/")))
        if hmac.compare_digest(given.encode(), settings.api_token.encode()):
            limit.succeeded(client)
            return signed_in(request, settings.api_token, target)
        limit.failed(client)
        view.errors.append("That is not this server's API token.")
        return view.render("login.html", "login", status=401, target=target)
    return view.render("login.html", "login", target=target)


async def api_docs(request: Request) -> Response:
    """/docs: /openapi.json as a page to read."""
    view = View(request)
    return view.render("docs.html", "docs", spec=spec(view.settings))


async def logout(request: Request) -> Response:
    return signed_out()


def page_routes(settings: Settings) -> list[BaseRoute]:
    """The pages, behind the sign-in when the server has an API token, and their assets.

    Routes of their own, not a catch-all mount: a method a path does not take stays a 405.
    """
    session = [Middleware(PageSession, settings.api_token)]
    pages: list[tuple[str, Callable[..., Any], list[str]]] = [
        ("/", dashboard, ["GET"]),
        ("/calls", calls_page, ["GET"]),
        ("/calls/{call_id}", call_page, ["GET"]),
        ("/missed", missed_page, ["GET"]),
        ("/extensions", extensions_page, ["GET"]),
        ("/events", events_page, ["GET"]),
        ("/rejects", rejects_page, ["GET"]),
        ("/docs", api_docs, ["GET"]),
        ("/login", functools.partial(login, SignInLimit()), ["GET", "POST"]),
        ("/logout", logout, ["POST"]),
    ]
    routes: list[BaseRoute] = [
        Route(path, endpoint, methods=methods, middleware=session)
        for path, endpoint, methods in pages
    ]
    routes.append(Mount("/static", StaticFiles(packages=[("receiver.web", "static")])))
    return routes
