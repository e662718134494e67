"""What a listing or a report asks for, as SQL conditions; pages and cursors."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from receiver.calls import CALLS_VERSION, DEFAULT_UNKNOWN_AFTER_US, digits
from receiver.stored import text_or_none


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing an event did: its id, and whether it was a repeat of a stored one."""

    id: int
    duplicate: bool

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its two values: the writer process sends one per delivery.
        return (Stored, (self.id, self.duplicate))


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a keyset-paginated listing; `next` is the cursor of the following page."""

    items: list[Any]
    next: str | None


EXPORT_PAGE = 1000
LONGEST_CALL_US = 86_400_000_000


@dataclass(frozen=True)
class EventQuery:
    """Which events to list; every field narrows the result."""

    myids: tuple[str, ...] = ()
    event_type: str | None = None
    call_id: str | None = None
    sub_call_id: str | None = None
    number: str | None = None  # any of the event's numbers, compared as digits
    extension: str | None = None  # prefix*ext, calling or called
    call_status: str | None = None
    call_flow: str | None = None
    source: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    descending: bool = False

    def where(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.myids:
            where.append(f"myid IN ({', '.join('?' * len(self.myids))})")
            params += self.myids
        for column in (
            "event_type",
            "call_id",
            "sub_call_id",
            "call_status",
            "call_flow",
            "source",
        ):
            value = getattr(self, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.number is not None:
            where.append(
                "? IN (digits(caller_id_num), digits(called_number), digits(remote_number), "
                "digits(called_did))"
            )
            params.append(digits(self.number))
        if self.extension is not None:
            where.append(
                "(caller_id_num = ? OR called_number = ? "
                "OR caller_extension LIKE ? OR called_extension LIKE ?)"
            )
            params += [self.extension, self.extension, f"{self.extension}@%", f"{self.extension}@%"]
        if self.since_us is not None:
            where.append("order_us >= ?")
            params.append(self.since_us)
        if self.until_us is not None:
            where.append("order_us < ?")
            params.append(self.until_us)
        return where, params


@dataclass(frozen=True)
class CallQuery:
    """Which calls to list or report on."""

    myids: tuple[str, ...] = ()
    since_us: int | None = None
    until_us: int | None = None
    direction: str | None = None
    status: str | None = None
    number: str | None = None  # the external number, compared as digits
    extension: str | None = None  # any extension the call rang or came from
    descending: bool = False
    now_us: int = 0  # for telling in_progress from unknown_end
    unknown_after_us: int = DEFAULT_UNKNOWN_AFTER_US

    def unknown_before_us(self) -> int:
        return self.now_us - self.unknown_after_us

    def status_sql(self, table: str = "calls") -> str:
        """The status now: an open call whose last event is old enough is unknown_end.

        Its one ? takes unknown_before_us().
        """
        return (
            f"CASE WHEN {table}.status = 'in_progress' AND {table}.last_event_us < ? "
            f"THEN 'unknown_end' ELSE {table}.status END"
        )

    def where(self, table: str = "calls") -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.myids:
            # A call belongs to every myid that has one of its events (an IVR and the phone it
            # routes to may be different subscribers).
            marks = ", ".join("?" * len(self.myids))
            window, bounds = "", []
            if self.since_us is not None:
                window, bounds = " AND order_us >= ?", [self.since_us]
            if self.until_us is not None:  # a call's events all come within a day of its start
                window += " AND order_us < ?"
                bounds.append(self.until_us + LONGEST_CALL_US)
            # A call filled from the history has no events: its myids are its extensions' (few
            # calls, found by the calls_filled index).
            where.append(
                f"{table}.call_id IN (SELECT call_id FROM events WHERE myid IN ({marks}){window} "
                "UNION ALL SELECT filled.call_id FROM calls AS filled, json_each(filled.myids) "
                f"AS mine WHERE filled.source = 'call_history' AND mine.value IN ({marks}))"
            )
            params += [*self.myids, *bounds, *self.myids]
        if self.since_us is not None:
            where.append(f"{table}.started_us >= ?")
            params.append(self.since_us)
        if self.until_us is not None:
            where.append(f"{table}.started_us < ?")
            params.append(self.until_us)
        if self.direction is not None:
            where.append(f"{table}.direction = ?")
            params.append(self.direction)
        if self.status is not None:
            if self.status in ("in_progress", "unknown_end"):
                where.append(f"{self.status_sql(table)} = ?")
                params.append(self.unknown_before_us())
            else:
                where.append(f"{table}.status = ?")
            params.append(self.status)
        if self.number is not None:
            where.append(f"{table}.external_digits = ?")
            params.append(digits(self.number))
        if self.extension is not None:  # one of the JSON array's strings, whole
            where.append(f"{table}.extensions LIKE ? ESCAPE '!'")
            quoted = json.dumps(self.extension, ensure_ascii=False)
            params.append("%" + re.sub(r"([!%_])", r"!\1", quoted) + "%")
        return where, params


def local_time_sql(column: str, offsets: tuple[tuple[int, int], ...]) -> tuple[str, list[int]]:
    """`column` (µs since the epoch) on a zone's wall clock, from the zone's offsets over the
    time asked about (zones.offsets): one CASE branch a change of offset."""
    if len(offsets) == 1:
        return f"({column} + ?)", [offsets[0][1]]
    branches, params = [], []
    for (_, offset), (change, _) in itertools.pairwise(offsets):
        branches.append(f"WHEN {column} < ? THEN ?")
        params += [change, offset]
    return f"({column} + CASE {' '.join(branches)} ELSE ? END)", [*params, offsets[-1][1]]


def sql_digits(value: Any) -> str | None:
    """digits() as SQL calls it (the `digits` function of every connection) on a stored value,
    whatever it holds: a blob read as text_or_none() reads it (a file edited or damaged)."""
    return digits(text_or_none(value))


# The `next` cursors of event and call pages: `<order_us>:<id>` and `<started_us>:<call_id>`,
# each number a 64-bit integer (at most 18 digits here, so that any match can be bound); and
# `~<id>` and `~<call_id>`, after an event or call whose time is not an integer (event_cursor).
EVENT_CURSOR_PATTERN = r"-?\d{1,18}:\d{1,18}|~\d{1,18}"
CALL_CURSOR_PATTERN = r"-?\d{1,18}:.+|~.+"
EVENT_CURSOR = re.compile(EVENT_CURSOR_PATTERN)
CALL_CURSOR = re.compile(CALL_CURSOR_PATTERN, re.DOTALL)


def event_cursor(order_us: Any, event_id: int) -> str:
    """The `next` cursor after the event of this order time and id (parse_cursor reads it).

    An order_us that is not an integer (a file edited by hand or damaged: SQLite keeps any
    value, and sorts text and blobs after every number) makes `~<id>`: after that event,
    wherever its stored value sorts."""
    if type(order_us) is int:
        return f"{order_us}:{event_id}"
    return f"~{event_id}"


def call_cursor(started_us: Any, call_id: Any) -> str:
    """The `next` cursor after the call of this start and id (parse_call_cursor reads it); as
    event_cursor, `~<call_id>` where started_us is not an integer."""
    if type(started_us) is int:
        return f"{started_us}:{call_id}"
    return f"~{call_id}"


def parse_cursor(cursor: str) -> tuple[int | None, int]:
    """`<order_us>:<id>` -> its two integers, `~<id>` -> None and the id. Raises ValueError
    when it is not one of ours."""
    if not EVENT_CURSOR.fullmatch(cursor):
        raise ValueError(f"{cursor!r} is not an events cursor")
    if cursor.startswith("~"):
        return None, int(cursor[1:])
    order_us, _, event_id = cursor.partition(":")
    return int(order_us), int(event_id)


def cursor_where(cursor: str, compared: str) -> tuple[str, list[Any]]:
    """The condition of the events `compared` (`>`, `<=`, ...) to the cursor's event, in time
    order, and its parameters."""
    return keyset_where("events", "order_us", "id", *parse_cursor(cursor), compared)


def keyset_where(
    table: str, order: str, key: str, order_value: Any, key_value: Any, compared: str
) -> tuple[str, list[Any]]:
    """`(order, key) <compared> (order_value, key_value)`, and its parameters; where the order
    value is None (a `~` cursor), compared with that row's own stored values instead."""
    if order_value is None:  # whatever the row stores
        own = f"SELECT {order}, {key} FROM {table} WHERE {key} = ?"
        return f"({order}, {key}) {compared} ({own})", [key_value]
    return f"({order}, {key}) {compared} (?, ?)", [order_value, key_value]


def parse_call_cursor(cursor: str) -> tuple[int | None, str]:
    """`<started_us>:<call_id>` -> its two parts, `~<call_id>` -> None and the id. Raises
    ValueError when it is not one of ours."""
    if not CALL_CURSOR.fullmatch(cursor):
        raise ValueError(f"{cursor!r} is not a calls cursor")
    if cursor.startswith("~"):
        return None, cursor[1:]
    started_us, _, call_id = cursor.partition(":")
    return int(started_us), call_id


def call_cursor_where(cursor: str, compared: str) -> tuple[str, list[Any]]:
    """The condition of the calls `compared` (`>` or `<`) to the cursor's call, in time order,
    and its parameters."""
    return keyset_where("calls", "started_us", "call_id", *parse_call_cursor(cursor), compared)


def event_page_sql(
    query: EventQuery, columns: str, after: str | None, through: str | None = None
) -> tuple[str, list[Any]]:
    """SELECT `columns` of the events after the cursor (and up to `through`, included), in
    time order; its last ? is the limit."""
    where, params = query.where()
    for cursor, compared in ((after, "<" if query.descending else ">"),
                             (through, ">=" if query.descending else "<=")):  # fmt: skip
        if cursor is not None:
            condition, values = cursor_where(cursor, compared)
            where.append(condition)
            params += values
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    way = "DESC" if query.descending else "ASC"
    sql = f"SELECT {columns} FROM events {clause} ORDER BY order_us {way}, id {way} LIMIT ?"
    return sql, params


@dataclass(frozen=True)
class CallsState:
    """How far the calls are built: up to which event, by which version of call building."""

    version: int  # CALLS_VERSION of the code that built them
    built_to_event: int  # the calls of every event up to this id are built
    events: int  # the newest event's id
    rebuild_to: int  # a rebuild of every call goes up to this event

    @property
    def rebuilding(self) -> bool:
        """Whether the calls are (to be) built again by this version, from the first event."""
        return self.version != CALLS_VERSION or self.built_to_event < self.rebuild_to

    @property
    def current(self) -> bool:
        """Whether every stored event's call is built by this version."""
        return self.version == CALLS_VERSION and self.built_to_event >= self.events

    def json(self) -> dict[str, Any]:
        return {"version": self.version, "expected": CALLS_VERSION,
                "built_to_event": self.built_to_event, "events": self.events,
                "rebuilding": self.rebuilding}  # fmt: skip


@dataclass
class Reparsed:
    """What parsing stored events again did: counts, and the last id it went through."""

    read: int = 0
    changed: int = 0
    merged: int = 0
    refused: int = 0
    held: int = 0
    last_id: int = 0

    def add(self, batch: Reparsed) -> None:
        """Count a batch's results in these."""
        for name in ("read", "changed", "merged", "refused", "held"):
            setattr(self, name, getattr(self, name) + getattr(batch, name))
        self.last_id = batch.last_id
