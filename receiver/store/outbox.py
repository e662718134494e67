"""The outbox's SQL (SQLite): the messages to forward, written in the commits that cause them,
claimed by the delivery worker, and what became of them.

One row is one message for one destination. `status` is `pending` (to send: `due_us` says
when, and `lease_until_us`, while an attempt is in flight, who has it), `delivered` or `dead`
(no more tries). A message waits for the ones written before it with the same `order_key` (its
call) and the same destination: one of a call is in flight at a time, so a call's messages
arrive in order. outbox_destinations keeps the routes the server was started with (so that
another process storing events on the file writes their messages too) and whether a
destination was disabled (it answered 410).

The claim is one write transaction: SQLite's write lock makes it one process's at a time, so
two servers on one file never take the same message. On PostgreSQL (postgresql.py runs these
functions through pg_dialect) the same query takes its rows FOR UPDATE SKIP LOCKED: a row
another instance is claiming is skipped, and one it has claimed fails the lease test once
that commits.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from receiver.forward.messages import Message
from receiver.forward.rules import Route

OUTBOX_MIGRATION = """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        myid TEXT NOT NULL,
        order_key TEXT,
        event_id INTEGER,
        call_id TEXT,
        content_type TEXT NOT NULL,
        body BLOB NOT NULL,
        created_us INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        due_us INTEGER NOT NULL,
        lease_holder TEXT,
        lease_until_us INTEGER NOT NULL DEFAULT 0,
        last_try_us INTEGER,
        last_status INTEGER,
        last_error TEXT,
        delivered_us INTEGER
    );
    CREATE UNIQUE INDEX outbox_message ON outbox (destination, message_id);
    CREATE INDEX outbox_due ON outbox (destination, due_us, id) WHERE status = 'pending';
    CREATE INDEX outbox_order ON outbox (destination, order_key, id) WHERE status = 'pending';
    CREATE INDEX outbox_pending ON outbox (destination, id) WHERE status = 'pending';
    CREATE INDEX outbox_dead ON outbox (destination, id) WHERE status = 'dead';
    CREATE INDEX outbox_delivered ON outbox (id) WHERE status = 'delivered';
    CREATE TABLE outbox_destinations (
        destination TEXT PRIMARY KEY,
        myids TEXT,
        types TEXT,
        original INTEGER NOT NULL DEFAULT 0,
        disabled_us INTEGER,
        disabled_why TEXT
    );
"""

STATUSES = ("pending", "delivered", "dead")
DELIVERY_COLUMNS = (
    "id, destination, message_id, type, myid, call_id, event_id, status, attempts, created_us, "
    "due_us, last_try_us, last_status, last_error, delivered_us"
)
INSERT_MESSAGE = (
    "INSERT INTO outbox (destination, message_id, type, myid, order_key, event_id, "
    "call_id, content_type, body, created_us, due_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (destination, message_id) DO NOTHING"
)
# An end of a call not sent yet (nor being sent) is replaced by the newer one, written after
# the call's other messages so that it stays their last.
DROP_UNSENT = (
    "DELETE FROM outbox WHERE destination = ? AND message_id = ? AND status = 'pending' "
    "AND attempts = 0 AND lease_until_us <= ?"
)
CLAIMABLE = """
    SELECT id FROM outbox AS o
    WHERE destination = ?1 AND status = 'pending' AND due_us <= ?2 AND lease_until_us <= ?2
      AND NOT EXISTS (
        SELECT 1 FROM outbox AS p
        WHERE p.destination = ?1 AND p.order_key = o.order_key AND p.status = 'pending'
          AND p.id < o.id AND (p.attempts > 0 OR p.due_us <= ?2))
    ORDER BY due_us, id LIMIT ?3
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """A message claimed for one attempt."""

    id: int
    destination: str
    message_id: str
    type: str
    content_type: str
    body: bytes
    attempts: int  # the attempts made before this one
    created_us: int
    event_id: int | None = None
    call_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: the row's new status, and when to try again if pending."""

    id: int
    status: str  # pending (to try again at due_us), delivered or dead
    tried_us: int
    http_status: int | None
    error: str | None
    due_us: int = 0
    disable: str | None = None  # why the destination is disabled (it answered 410)


@dataclasses.dataclass
class Trimmed:
    """The rows a trim of a full outbox dropped, by their status."""

    delivered: int = 0
    dead: int = 0
    pending: int = 0


def route_row(route: Route) -> tuple[Any, ...]:
    """A route as outbox_destinations keeps it (and a writer process's command line)."""

    def listed(values: frozenset[str] | None) -> list[str] | None:
        return None if values is None else sorted(values)

    return (route.url, listed(route.myids), listed(route.types), int(route.original))


def route_db_row(route: Route) -> tuple[Any, ...]:
    url, myids, types, original = route_row(route)
    return (url, None if myids is None else json.dumps(myids),
            None if types is None else json.dumps(types), original)  # fmt: skip


def set_routes(db: sqlite3.Connection, routes: Sequence[Route]) -> None:
    """Make `routes` the file's destinations; a destination kept stays disabled if it was."""
    db.execute("DELETE FROM outbox_destinations WHERE destination NOT IN (SELECT value FROM "
               "json_each(?))", (json.dumps([route.url for route in routes]),))  # fmt: skip
    db.executemany(
        "INSERT INTO outbox_destinations (destination, myids, types, original) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE SET myids = excluded.myids, "
        "types = excluded.types, original = excluded.original",
        [route_db_row(route) for route in routes],
    )


def routes_differ(db: sqlite3.Connection, routes: Sequence[Route]) -> bool:
    """Whether the file's destinations are other than `routes` (their disabling aside)."""
    kept = db.execute(
        "SELECT destination, myids, types, original FROM outbox_destinations ORDER BY destination"
    ).fetchall()
    return [tuple(row) for row in kept] != sorted(route_db_row(route) for route in routes)


def enabled_routes(db: sqlite3.Connection) -> list[Route]:
    """The destinations messages are written for: those not disabled."""
    rows = db.execute(
        "SELECT destination, myids, types, original FROM outbox_destinations "
        "WHERE disabled_us IS NULL ORDER BY destination"
    ).fetchall()

    def listed(text: str | None) -> frozenset[str] | None:
        return None if text is None else frozenset(json.loads(text))

    return [Route(url, listed(myids), listed(types), bool(o)) for url, myids, types, o in rows]


def insert_messages(db: sqlite3.Connection, messages: Iterable[Message], now_us: int) -> None:
    ends, rows = message_rows(messages, now_us)
    if ends:
        db.executemany(DROP_UNSENT, ends)
    if rows:
        db.executemany(INSERT_MESSAGE, rows)


def message_rows(
    messages: Iterable[Message], now_us: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The parameters of DROP_UNSENT (a call's newer end replaces one not sent) and of
    INSERT_MESSAGE for `messages`."""
    rows: list[tuple[Any, ...]] = []
    ends: list[tuple[Any, ...]] = []
    for m in messages:
        if m.message_id.endswith("_ended"):
            ends.append((m.destination, m.message_id, now_us))
        rows.append(
            (m.destination, m.message_id, m.type, m.myid, m.order_key, m.event_id, m.call_id,
             m.content_type, m.body, now_us, m.due_us)
        )  # fmt: skip
    return ends, rows


def finish(db: sqlite3.Connection, outcomes: Sequence[Outcome], holder: str) -> None:
    """Record attempts' outcomes (only of rows this holder still has), and disable the
    destinations that answered 410."""
    db.executemany(
        "UPDATE outbox SET status = ?, attempts = attempts + 1, due_us = ?, last_try_us = ?, "
        "last_status = ?, last_error = ?, "
        "delivered_us = CASE WHEN ? = 'delivered' THEN ? END, "
        "lease_holder = NULL, lease_until_us = 0 WHERE id = ? AND lease_holder = ?",
        [
            (o.status, o.due_us, o.tried_us, o.http_status, o.error, o.status, o.tried_us, o.id,
             holder)
            for o in outcomes
        ],
    )  # fmt: skip
    for o in outcomes:
        if o.disable is not None:
            db.execute(
                "UPDATE outbox_destinations SET disabled_us = ?, disabled_why = ? "
                "WHERE destination = (SELECT destination FROM outbox WHERE id = ?)",
                (o.tried_us, o.disable, o.id),
            )


def claim(
    db: sqlite3.Connection,
    destination: str,
    holder: str,
    now_us: int,
    until_us: int,
    limit: int,
    locking: str = "",
) -> list[Delivery]:
    """Lease up to `limit` messages of a destination that are due, the first of each call.
    `locking` ends the choice of rows: PostgreSQL's claims them FOR UPDATE SKIP LOCKED."""
    if limit <= 0:
        return []
    disabled = db.execute(
        "SELECT 1 FROM outbox_destinations WHERE destination = ? AND disabled_us IS NOT NULL",
        (destination,),
    ).fetchone()
    if disabled:
        return []
    ids = [row[0] for row in db.execute(CLAIMABLE + locking, (destination, now_us, limit))]
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    db.execute(
        f"UPDATE outbox SET lease_holder = ?, lease_until_us = ? WHERE id IN ({marks})",
        [holder, until_us, *ids],
    )
    rows = db.execute(
        "SELECT id, destination, message_id, type, content_type, body, attempts, created_us, "
        f"event_id, call_id FROM outbox WHERE id IN ({marks}) ORDER BY due_us, id",
        ids,
    ).fetchall()
    return [
        Delivery(row_id, to, message_id, kind, content_type, bytes(body), tries, at, event, call)
        for row_id, to, message_id, kind, content_type, body, tries, at, event, call in rows
    ]


def trim(db: sqlite3.Connection, excess: int) -> Trimmed:
    """Drop `excess` rows: the oldest delivered first, then the oldest dead, then (the outbox
    is full of messages not yet sent) the oldest pending."""
    dropped = Trimmed()
    for status in ("delivered", "dead", "pending"):
        if excess <= 0:
            break
        gone = db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE status = ? "
            "ORDER BY id LIMIT ?)",
            (status, excess),
        ).rowcount
        setattr(dropped, status, gone)
        excess -= gone
    return dropped


def retry(
    db: sqlite3.Connection, destination: str | None, since_us: int | None, now_us: int
) -> int:
    """The dead messages (of a destination, created since a time) made due again, with a new
    round of attempts; their destinations enabled again."""
    where: list[str] = ["status = 'dead'"]
    params: list[Any] = []
    if destination is not None:
        where.append("destination = ?")
        params.append(destination)
    if since_us is not None:
        where.append("created_us >= ?")
        params.append(since_us)
    enable = "UPDATE outbox_destinations SET disabled_us = NULL, disabled_why = NULL"
    if destination is not None:
        db.execute(f"{enable} WHERE destination = ?", (destination,))
    else:
        db.execute(enable)
    return db.execute(
        f"UPDATE outbox SET status = 'pending', attempts = 0, due_us = ?, lease_holder = NULL, "
        f"lease_until_us = 0 WHERE {' AND '.join(where)}",
        [now_us, *params],
    ).rowcount


def again(db: sqlite3.Connection, messages: Sequence[Message], now_us: int) -> int:
    """Messages written again (a replay): a row of the same id is due again, whatever became of
    it; a missing one is written."""
    db.executemany(
        "UPDATE outbox SET status = 'pending', attempts = 0, due_us = ?, body = ?, "
        "lease_holder = NULL, lease_until_us = 0 "
        "WHERE destination = ? AND message_id = ? AND lease_until_us <= ?",
        [(now_us, m.body, m.destination, m.message_id, now_us) for m in messages],
    )
    insert_messages(db, messages, now_us)
    return len(messages)


DEFAULT_SETTLE_US = 5_000_000  # a call's end waits this long for more events (--forward-settle)


@dataclasses.dataclass(frozen=True)
class Forwarding:
    """What a writer needs to write the outbox: the routes a server was started with, and the
    settle window of a call's end. A writer given none (a command's) reads the routes the
    server left in the file."""

    routes: tuple[Route, ...]
    settle_us: int = DEFAULT_SETTLE_US

    def text(self) -> str:
        """As JSON, for the command line of a writer process."""
        return json.dumps(
            {"routes": [route_row(route) for route in self.routes], "settle_us": self.settle_us}
        )

    @classmethod
    def from_text(cls, text: str) -> Forwarding:
        found = json.loads(text)

        def listed(value: list[str] | None) -> frozenset[str] | None:
            return None if value is None else frozenset(value)

        routes = tuple(
            Route(url, listed(myids), listed(types), bool(original))
            for url, myids, types, original in found["routes"]
        )
        return cls(routes, found["settle_us"])


@dataclasses.dataclass(frozen=True)
class DeliveryQuery:
    """Which outbox rows a listing wants (GET /api/deliveries, receiver forward list)."""

    status: str | None = None
    destination: str | None = None
    type: str | None = None
    call_id: str | None = None
    event_id: int | None = None
    since_us: int | None = None  # created at or after

    def where(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("status", self.status),
            ("destination", self.destination),
            ("type", self.type),
            ("call_id", self.call_id),
            ("event_id", self.event_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.since_us is not None:
            where.append("created_us >= ?")
            params.append(self.since_us)
        return where, params


def delivery_record(row: Sequence[Any], now_us: int) -> dict[str, Any]:
    """One outbox row's JSON form (DELIVERY_COLUMNS), without its body."""
    from receiver.event import iso_time

    (row_id, destination, message_id, kind, myid, call_id, event_id, status, attempts,
     created_us, due_us, last_try_us, last_status, last_error, delivered_us) = row  # fmt: skip
    return {
        "id": row_id,
        "destination": destination,
        "message_id": message_id,
        "type": kind,
        "myid": myid,
        "call_id": call_id,
        "event_id": event_id,
        "status": status,
        "attempts": attempts,
        "created_at": iso_time(created_us),
        "next_try_at": iso_time(due_us) if status == "pending" else None,
        "last_try_at": iso_time(last_try_us),
        "last_status": last_status,
        "last_error": last_error,
        "delivered_at": iso_time(delivered_us),
    }


# Cheap counts for /healthz: the partial indexes hold just these rows.
OUTBOX_COUNTS = """
    SELECT d.destination, d.disabled_us, d.disabled_why,
      (SELECT count(*) FROM outbox WHERE destination = d.destination AND status = 'pending'),
      (SELECT count(*) FROM outbox WHERE destination = d.destination AND status = 'dead'),
      (SELECT created_us FROM outbox WHERE id = (SELECT min(id) FROM outbox
         WHERE destination = d.destination AND status = 'pending'))
    FROM outbox_destinations AS d ORDER BY d.destination
"""
