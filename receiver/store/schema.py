"""The database's tables, their migrations, and rows to and from records."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import operator
import sqlite3
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from receiver.calls import Call, CallLeg, build_call, call_json, digits
from receiver.event import Event, Flag, RawRequest, Reject, key_prefix, stored_row
from receiver.packing import unpack
from receiver.store.outbox import OUTBOX_MIGRATION
from receiver.stored import (
    BRIDGED,
    READ_FAILURES,
    STORED_FIELDS,
    TRANSFERRED,
    as_bytes,
    integer_or_none,
    json_object,
    json_texts,
    kinds_fit,
    readable_row,
    text_or_none,
)

MIGRATIONS: tuple[str, ...] = (
    # 1: events and rejects.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        myid TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event_time_us INTEGER,
        order_us INTEGER NOT NULL,
        call_id TEXT,
        sub_call_id TEXT,
        call_api_id TEXT,
        callback_id TEXT,
        caller_id_num TEXT,
        caller_id_name TEXT,
        called_did TEXT,
        called_number TEXT,
        caller_extension TEXT,
        caller_extension_id INTEGER,
        called_extension TEXT,
        called_extension_id INTEGER,
        call_status TEXT,
        call_flow TEXT,
        duration_us INTEGER,
        rec_id TEXT,
        transferred INTEGER NOT NULL,
        bridged INTEGER,
        diversion TEXT,
        remote_number TEXT,
        extra TEXT NOT NULL,
        flags TEXT NOT NULL,
        received_at_us INTEGER NOT NULL,
        source TEXT NOT NULL,
        raw_method TEXT NOT NULL,
        raw_query BLOB NOT NULL,
        raw_body BLOB NOT NULL,
        raw_content_type TEXT,
        dedup_key BLOB NOT NULL UNIQUE,
        duplicates INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX events_myid_order ON events (myid, order_us, id);
    CREATE INDEX events_order ON events (order_us, id);
    CREATE INDEX events_call_id ON events (call_id);
    CREATE INDEX events_sub_call_id ON events (sub_call_id);
    CREATE TABLE rejects (
        id INTEGER PRIMARY KEY,
        received_at_us INTEGER NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        myid TEXT,
        client TEXT,
        raw_method TEXT NOT NULL,
        raw_query BLOB NOT NULL,
        raw_body BLOB NOT NULL,
        raw_content_type TEXT,
        body_size INTEGER NOT NULL
    );
    """,
    # 2: calls rebuilt from their events, kept up to date from a list of changed calls.
    """
    CREATE TABLE calls_dirty (call_id TEXT PRIMARY KEY) WITHOUT ROWID;
    INSERT INTO calls_dirty SELECT DISTINCT call_id FROM events WHERE call_id IS NOT NULL;
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        myid TEXT NOT NULL,
        direction TEXT NOT NULL,
        status TEXT NOT NULL,
        started_us INTEGER NOT NULL,
        answered_us INTEGER,
        ended_us INTEGER,
        last_event_us INTEGER NOT NULL,
        ring_us INTEGER,
        talk_us INTEGER,
        external_number TEXT,
        external_digits TEXT,
        did TEXT,
        answered_by TEXT,
        extensions TEXT NOT NULL,
        transferred INTEGER NOT NULL,
        callback_id TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX calls_started ON calls (started_us, call_id);
    CREATE INDEX calls_external ON calls (external_digits, started_us);
    CREATE TABLE legs (
        call_id TEXT NOT NULL,
        sub_call_id TEXT NOT NULL,
        extension TEXT,
        direction TEXT,
        started_us INTEGER,
        answered_us INTEGER,
        ended_us INTEGER,
        ring_us INTEGER,
        talk_us INTEGER,
        status TEXT,
        answered INTEGER NOT NULL,
        routing INTEGER NOT NULL
    );
    CREATE INDEX legs_call ON legs (call_id);
    CREATE INDEX legs_extension ON legs (extension, started_us);
    """,
    # 3: covering indexes for the missed report: its missed calls, then one seek per number.
    """
    DROP INDEX calls_external;
    CREATE INDEX calls_number
        ON calls (external_digits, status, started_us, direction, answered_by);
    CREATE INDEX calls_outcome
        ON calls (direction, status, started_us, external_digits, external_number, did);
    """,
    # 4: the calls of a myid come from its events: carry call_id in their index.
    """
    DROP INDEX events_myid_order;
    CREATE INDEX events_myid_order ON events (myid, order_us, id, call_id);
    """,
    # 5: each event's NDJSON export line, made by SQLite once, when the event is stored (dropped
    # in 8: the lines are made as they are read).
    """
    CREATE TABLE event_lines (id INTEGER PRIMARY KEY, line TEXT NOT NULL);
    """,
    # 6: de-dup keys start with EventTime (Event.dedup_key). The events stored before get it
    # before step 10 (rewrite_old_keys), down from old_keys.up_to to 0.
    """
    CREATE TABLE old_keys (up_to INTEGER NOT NULL);
    INSERT INTO old_keys SELECT coalesce(max(id), 0) FROM events;
    """,
    # 7: the calls are built from every event up to one id, instead of from a list of the
    # changed calls (a random insert into that list cost two pages written in every commit).
    """
    CREATE TABLE calls_built (events_to INTEGER NOT NULL);
    INSERT INTO calls_built SELECT coalesce(
        (SELECT min(id) - 1 FROM events WHERE call_id IN (SELECT call_id FROM calls_dirty)),
        (SELECT max(id) FROM events),
        0
    );
    DROP TABLE calls_dirty;
    """,
    # 8: no stored copy of each event's JSON: an export makes its lines from the events' columns
    # as it reads them (event_record), which costs less than reading 1.3 KB more per event. The
    # table stays, empty: a server of version 7 still writes it as it stores repeats, and beside
    # a newer one on the same file (a restart without downtime) it would fail without it.
    """
    DELETE FROM event_lines;
    """,
    # 9: calls and legs hold their records' fields as columns, no JSON copy (their record is
    # made from them as they are read), and the calls say which version of call building made
    # them (CALLS_VERSION): 0 here, so the new tables are built from all the events.
    """
    DROP TABLE legs;
    DROP TABLE calls;
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        myid TEXT NOT NULL,
        myids TEXT NOT NULL,
        direction TEXT NOT NULL,
        started_us INTEGER NOT NULL,
        answered_us INTEGER,
        ended_us INTEGER,
        last_event_us INTEGER NOT NULL,
        ring_us INTEGER,
        talk_us INTEGER,
        status TEXT NOT NULL,
        external_number TEXT,
        did TEXT,
        answered_by TEXT,
        extensions TEXT NOT NULL,
        transferred INTEGER NOT NULL,
        callback_id TEXT,
        recordings TEXT NOT NULL,
        external_digits TEXT
    );
    CREATE INDEX calls_started ON calls (started_us, call_id);
    CREATE INDEX calls_number
        ON calls (external_digits, status, started_us, direction, answered_by);
    CREATE INDEX calls_outcome
        ON calls (direction, status, started_us, external_digits, external_number, did);
    CREATE TABLE legs (
        call_id TEXT NOT NULL,
        sub_call_id TEXT NOT NULL,
        extension TEXT,
        extension_id INTEGER,
        direction TEXT,
        started_us INTEGER,
        answered_us INTEGER,
        ended_us INTEGER,
        talk_us INTEGER,
        status TEXT,
        transferred INTEGER NOT NULL,
        bridged INTEGER,
        rec_id TEXT,
        answered INTEGER NOT NULL,
        routing INTEGER NOT NULL,
        ring_us INTEGER
    );
    CREATE INDEX legs_call ON legs (call_id);
    CREATE INDEX legs_extension ON legs (extension, started_us);
    ALTER TABLE calls_built ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls_built ADD COLUMN rebuild_to INTEGER NOT NULL DEFAULT 0;
    UPDATE calls_built SET events_to = 0, version = 0;
    """,
    # 10: every de-dup key has EventTime in front, the old ones rewritten by migrate() before
    # this step (rewrite_old_keys): a lookup tries one form of each key, and the mark goes.
    """
    DROP TABLE old_keys;
    """,
    # 11: the highest id of an event that is gone (merged into another by a re-parse): ids are
    # the highest one stored plus one, and an id once answered to the PBX must never be given
    # to another event.
    """
    CREATE TABLE retired_ids (top INTEGER NOT NULL);
    INSERT INTO retired_ids VALUES (0);
    """,
    # 12: the raw request deflated with a preset dictionary (receiver/packing.py), a third of
    # its size. The rows stored before, and those a server of an earlier version stores beside
    # this one, have 0 here: theirs are kept as received.
    """
    ALTER TABLE events ADD COLUMN raw_packing INTEGER NOT NULL DEFAULT 0;
    """,
    # 13: calls filled from the PBX's call history. history_calls keeps each record as the PBX
    # gave it, under its call_uuid in lower case: the source of a call none of whose events came,
    # as the events are of the others (its calls row is built from it, and again by every
    # rebuild, until an event of the call arrives). calls.source says which a call came from.
    # calls_filled finds those for a myid. reconcile_lease: the one reconciler at a time,
    # whichever process runs it.
    """
    CREATE TABLE history_calls (
        call_id TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        fetched_at_us INTEGER NOT NULL
    );
    ALTER TABLE calls ADD COLUMN source TEXT NOT NULL DEFAULT 'events';
    CREATE INDEX calls_filled ON calls (call_id) WHERE source = 'call_history';
    CREATE TABLE reconcile_lease (holder TEXT NOT NULL, until_us INTEGER NOT NULL);
    INSERT INTO reconcile_lease VALUES ('', 0);
    """,
    # 14: the dashboard's calls per hour: a count per status and hour, each a range of this
    # index read without the table (and in_progress split by last_event_us, for unknown_end).
    """
    CREATE INDEX calls_status_started ON calls (status, started_us, last_event_us);
    """,
    # 15: the outbox of forwarded messages, and the destinations they go to (outbox.py).
    OUTBOX_MIGRATION,
    # 16: how many events are stored, kept by triggers whatever inserts or deletes them, so that
    # /metrics and /readyz need not count a table of millions of rows (for 1M events from a
    # cold cache, 407 ms on a quiet machine, 10.9 s on a busy one). The migration holds the
    # write lock: no event falls between the count and the triggers.
    """
    CREATE TABLE event_count (events INTEGER NOT NULL);
    INSERT INTO event_count SELECT count(*) FROM events;
    CREATE TRIGGER events_counted_in AFTER INSERT ON events
    BEGIN
        UPDATE event_count SET events = events + 1;
    END;
    CREATE TRIGGER events_counted_out AFTER DELETE ON events
    BEGIN
        UPDATE event_count SET events = events - 1;
    END;
    """,
    # 17: raw requests packed with zstandard (raw_packing 2, receiver/packing.py), smaller than
    # deflated and packed in a sixth of the time. Nothing changes in the tables: the version
    # only keeps a receiver that cannot read such rows from opening the database.
    "",
)
SCHEMA_VERSION = len(MIGRATIONS)
KEYS_REWRITTEN = 10  # the version before which migrate() rewrites the old de-dup keys
EVENTS_COUNTED = 16  # the version that counts the events (event_count)

# The events-table columns of an event, in the order event_from_row() and event_record() take.
EVENT_COLUMNS = ", ".join(STORED_FIELDS)
EVENT_MARKS = f"({', '.join('?' * (EVENT_COLUMNS.count(',') + 2))})"
# The same for call building, which never reads the raw request: its query and body come empty,
# neither copied out of SQLite nor unpacked.
EVENT_COLUMNS_BUT_RAW = ", ".join(
    f"x'' AS {name}" if name in ("raw_query", "raw_body") else name for name in STORED_FIELDS
)


def insert_events(count: int) -> str:
    """An INSERT of `count` rows of EVENT_COLUMNS then dedup_key."""
    return (
        f"INSERT INTO events ({EVENT_COLUMNS}, dedup_key) VALUES {', '.join([EVENT_MARKS] * count)}"
    )


REJECT_COLUMNS = (
    "id, received_at_us, status, reason, myid, client, raw_method, raw_query, raw_body, "
    "raw_content_type, body_size"
)
# The oldest rejects go while the raw requests of those newer take more than ? bytes.
TRIM_REJECTS_BY_BYTES = (
    "DELETE FROM rejects WHERE id <= (SELECT id FROM (SELECT id, sum(length(raw_query) + "
    "length(raw_body)) OVER (ORDER BY id DESC) AS newer FROM rejects) WHERE newer > ?1 "
    "ORDER BY id DESC LIMIT 1)"
)
# Only these make calls (pbx-events §2); messages and voicemail stay events.
CALL_EVENTS_SQL = "event_type IN ('dial-in', 'dial-out', 'answer', 'hangup')"
MAX_GROUP = 500  # events in one commit
# The same for a command storing many (replay): each commit writes every page it changed of the
# indexes keyed by random values (the de-dup key, CallID, SubCallID) once, so four times the
# events a commit write each such page about once instead of four times.
MAX_GROUP_COMMAND = 2000
GROUPS_IN_FLIGHT = 3  # groups sent to the writer before the first is answered: it never waits idle
KEYS_AT_ONCE = 2000  # old events given their new de-dup key per transaction of an upgrade
LOCK_FREE_SHARE = 0.25  # after each, the lock is left free this share of the time it was held
ROWS_AT_ONCE = 32  # events in one INSERT: 32 x 36 parameters, far below SQLite's limit


WAL_KEPT_BYTES = 64 * 1024 * 1024  # the most the WAL keeps on disk once emptied
BUSY_TIMEOUT = 5.0  # seconds a connection waits for another process's lock before it fails


UNDECODABLE = "Could not decode to UTF-8"  # sqlite3's error for stored text that is not UTF-8


def tolerant_text(data: bytes) -> str | bytes:
    """A text_factory: stored text as str, or as bytes where it is not UTF-8, for readable_row
    (receiver/event.py) to flag. Called for every text value, so only once one needs it."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def read_tolerantly(connection: Any, error: sqlite3.OperationalError) -> bool:
    """After `error`, whether reading again may succeed: when it was stored text that is not
    UTF-8 (a file edited or damaged), from now on `connection` (sqlite3 or aiosqlite) reads
    such text as bytes; a query that failed as another switched it may read again too."""
    if UNDECODABLE not in str(error):
        return False
    if connection.text_factory is not tolerant_text:
        read_text_tolerantly(connection)
    return True


def read_text_tolerantly(connection: Any) -> None:
    """From now on `connection` (sqlite3 or aiosqlite) reads stored text that is not UTF-8 as
    bytes, for readable_row to flag; said once in the log, as it means a damaged file."""
    logging.getLogger("receiver").warning(
        "the database holds text that is not UTF-8 (edited by hand? damaged?): reading "
        "on, each such value flagged damaged_value, more slowly"
    )
    connection.text_factory = tolerant_text


def connect_pragmas() -> str:
    """Settings for every connection.

    synchronous=FULL syncs the WAL at every commit, so a committed event survives a killed
    process and a power loss alike; group commit pays for it. The busy timeout comes first: it
    is what makes the others wait for another process's lock rather than fail. The WAL, which
    grows while a long read (a backup) holds its pages back, is cut back to WAL_KEPT_BYTES
    when it is next emptied, rather than keeping its largest size on disk.
    """
    return (
        f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}; PRAGMA synchronous=FULL; "
        f"PRAGMA cache_size=-32768; PRAGMA journal_size_limit={WAL_KEPT_BYTES};"
    )


def use_wal(connection: sqlite3.Connection) -> None:
    """Put the database in WAL mode (kept in the file), which lets readers run beside the writer.

    On a file still in rollback mode, the switch needs a lock SQLite does not wait for when
    another process is starting on it too (it answers SQLITE_BUSY at once), so it is tried
    again, as long as a busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    # A new file is made able to give the pages a prune frees back to the file system (SQLite
    # takes this only before the first table, and before the switch to WAL); on any other file
    # it changes nothing.
    connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, split where SQLite says one is complete."""
    statement = ""
    for part in script.split(";"):
        statement += f"{part};"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""


@dataclasses.dataclass
class KeyRewrite:
    """The long step of an upgrade, as it goes: old de-dup keys given EventTime in front.

    Working down by id from old_keys.up_to to 0, KEYS_AT_ONCE ids a transaction.
    """

    total: int = 0  # ids to go through, as first seen
    left: int = 0  # ids still to go through
    rewritten: int = 0  # keys this connection rewrote

    @property
    def done(self) -> int:
        return self.total - self.left


def migrate(
    connection: sqlite3.Connection,
    target: int = SCHEMA_VERSION,
    progress: Callable[[KeyRewrite], None] | None = None,
) -> int:
    """Bring a database to `target` schema version; returns the version it had.

    Servers, replays and read commands may start together on one file: each step is taken under
    the write lock (BEGIN IMMEDIATE) with the version read again inside it, so it is applied
    once, and the others wait for it, then find it done. (executescript() would commit the
    transaction first, so the statements go one by one.) Before step KEYS_REWRITTEN, the old
    de-dup keys are rewritten, a batch a transaction, so that another process writing the
    file (an older server) waits for the lock a moment at a time; `progress` is called after
    each batch.
    """
    found: int = connection.execute("PRAGMA user_version").fetchone()[0]
    check_known(found)
    if found >= target:
        return found  # versions only go up: no need to wait for the lock
    connection.create_function(
        "prefixed_key", 2, lambda time_us, key: key_prefix(time_us) + key, deterministic=True
    )
    if 0 < found < EVENTS_COUNTED <= target:
        # Step EVENTS_COUNTED counts the events under the write lock, which others wait for
        # BUSY_TIMEOUT at most: read the table once before, so that the count under the lock
        # finds its pages in memory (407 ms cold for a million events, 7 ms warm).
        connection.execute("SELECT count(*) FROM events").fetchone()
    rewrite: KeyRewrite | None = None
    while True:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version: int = connection.execute("PRAGMA user_version").fetchone()[0]
            check_known(version)
            if version >= target:
                connection.execute("COMMIT")
                return found
            if version + 1 == KEYS_REWRITTEN:
                (up_to,) = connection.execute("SELECT up_to FROM old_keys").fetchone()
                if rewrite is None:
                    rewrite = KeyRewrite(up_to, up_to)
                # An older server may write its own, higher, mark meanwhile: every mark ever
                # written has all the ids above it done, so the lowest seen is the one to use.
                rewrite.left = min(rewrite.left, up_to)
                if rewrite.left:
                    began = time.monotonic()
                    rewrite_old_keys(connection, rewrite)
                    connection.execute("COMMIT")
                    if progress is not None:
                        progress(rewrite)
                    # The lock left free a while: another process waiting for it polls at
                    # growing intervals (up to 100 ms), and would seldom find a gap of no time.
                    time.sleep((time.monotonic() - began) * LOCK_FREE_SHARE)
                    continue
            for statement in statements(MIGRATIONS[version]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version + 1}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise


def rewrite_old_keys(connection: sqlite3.Connection, rewrite: KeyRewrite) -> None:
    """Put EventTime in front of the de-dup keys of the next KEYS_AT_ONCE ids, working down.

    OR IGNORE: should an event's new key be another's already (the same event stored twice,
    under each form), the two are kept, and that other one is what a repeat finds.
    """
    bottom = max(rewrite.left - KEYS_AT_ONCE, 0)
    changed = connection.execute(
        "UPDATE OR IGNORE events SET dedup_key = prefixed_key(event_time_us, dedup_key) "
        "WHERE id > ? AND id <= ? AND length(dedup_key) = 16",
        (bottom, rewrite.left),
    )
    connection.execute("UPDATE old_keys SET up_to = ?", (bottom,))
    rewrite.rewritten += changed.rowcount
    rewrite.left = bottom


def pending_key_rewrite(connection: sqlite3.Connection) -> int:
    """How many ids the old-keys rewrite of an upgrade has to go through (0: none)."""
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if version >= KEYS_REWRITTEN or version == 0:
        return 0
    sql = "SELECT up_to FROM old_keys" if version >= 6 else "SELECT max(id) FROM events"
    return int(connection.execute(sql).fetchone()[0] or 0)


def check_known(version: int) -> None:
    """Raise if a database's schema is newer than this receiver's."""
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database is at schema version {version}, newer than this receiver knows "
            f"({SCHEMA_VERSION}): upgrade receiver"
        )


def event_row(event: Event, event_id: int, key: bytes) -> tuple[Any, ...]:
    """The events-table row of an Event as it is stored (its raw request packed), in
    EVENT_COLUMNS order then dedup_key."""
    return (*stored_row(event, event_id, packed=True), key)


class PreparedEvent(NamedTuple):
    """An event's row made before it goes to the writer process, all but its id, and its de-dup
    key. A command storing many (replay) makes them in its own process, beside the writer,
    which then has neither the packing nor the Event to unpickle (a sixth of its work); the
    server sends Events, as its own process has the more to do."""

    values: tuple[Any, ...]  # event_row's but the id
    key: bytes

    @classmethod
    def of(cls, event: Event) -> PreparedEvent:
        return cls(stored_row(event, None, packed=True)[1:], event.dedup_key())

    def row(self, event_id: int) -> tuple[Any, ...]:
        return (event_id, *self.values, self.key)


def event_from_row(row: Sequence[Any]) -> Event:
    """An Event from a row selected as EVENT_COLUMNS; a value this receiver could not have
    stored is replaced and flagged (readable_row)."""
    if kinds_fit(row):
        try:
            return trusted_event(row)
        except READ_FAILURES:
            pass
    values, damaged = readable_row(row)
    event = trusted_event(values)
    if not damaged:  # its types did not fit, but every value read (JSON in a blob, say)
        return event
    marks = tuple(f"{Flag.DAMAGED_VALUE}:{name}" for name in damaged)
    return dataclasses.replace(event, flags=event.flags + marks)


def trusted_event(row: Sequence[Any]) -> Event:
    """event_from_row() of a row whose values are of their columns' kinds; it may raise
    (READ_FAILURES) where they are not."""
    (
        event_id, myid, event_type, event_time_us, _order_us, call_id, sub_call_id, call_api_id,
        callback_id, caller_id_num, caller_id_name, called_did, called_number, caller_extension,
        caller_extension_id, called_extension, called_extension_id, call_status, call_flow,
        duration_us, rec_id, transferred, bridged, diversion, remote_number, extra, flags,
        received_at_us, source, raw_method, raw_query, raw_body, raw_content_type, raw_packing,
        duplicates,
    ) = row  # fmt: skip
    return Event(
        id=event_id,
        myid=myid,
        event_type=event_type,
        event_time_us=event_time_us,
        received_at_us=received_at_us,
        source=source,
        raw=RawRequest(
            raw_method,
            unpack(raw_query, raw_packing),
            unpack(raw_body, raw_packing),
            raw_content_type,
        ),
        call_id=call_id,
        sub_call_id=sub_call_id,
        call_api_id=call_api_id,
        callback_id=callback_id,
        caller_id_num=caller_id_num,
        caller_id_name=caller_id_name,
        called_did=called_did,
        called_number=called_number,
        caller_extension=caller_extension,
        caller_extension_id=caller_extension_id,
        called_extension=called_extension,
        called_extension_id=called_extension_id,
        call_status=call_status,
        call_flow=call_flow,
        duration_us=duration_us,
        rec_id=rec_id,
        transferred=TRANSFERRED[transferred],
        bridged=BRIDGED[bridged],
        diversion=diversion,
        remote_number=remote_number,
        extra=json_object(extra) if extra != "{}" else {},  # most events: skip the parser
        flags=tuple(json_texts(flags)) if flags != "[]" else (),
        duplicates=duplicates,
    )


def reject_row(reject: Reject) -> tuple[Any, ...]:
    """The rejects-table row of a Reject, in REJECT_COLUMNS order."""
    raw = reject.raw
    return (
        reject.id,
        reject.received_at_us,
        reject.status,
        reject.reason,
        reject.myid,
        reject.client,
        raw.method,
        raw.query,
        raw.body,
        raw.content_type,
        reject.body_size,
    )


def reject_from_row(row: Sequence[Any]) -> Reject:
    """A Reject from a row selected as REJECT_COLUMNS, whatever it holds: a reject is kept to
    show what was sent, so a value no receiver stores (a file edited or damaged) is shown as
    well as it reads, text as text, an integer that is not one as 0."""
    (rid, received, status, reason, myid, client, method, query, body, ctype, size) = row
    method, ctype = text_or_none(method) or "", text_or_none(ctype)
    raw = RawRequest(method, as_bytes(query), as_bytes(body), ctype)
    return Reject(
        integer_or_none(received) or 0,
        integer_or_none(status) or 0,
        text_or_none(reason) or "",
        raw,
        text_or_none(myid),
        text_or_none(client),
        integer_or_none(size) or 0,
        rid,
    )


CALLS_AT_ONCE = 200  # call events whose calls are rebuilt per writer turn (~20 ms)
# The same for a command building calls (replay's end, `receiver rebuild`), which has no
# deliveries of its own waiting: fewer, longer turns (~0.2 s; a server beside it on the file
# waits that long at most for a commit). Each commit writes every page of the calls' indexes
# it touched, and those are keyed by random ids: ten times the calls a commit touch each page
# about once instead of ten times (a quarter of the time call building took, in replay).
CALLS_AT_ONCE_COMMAND = 2000
CALLS_WHILE_BUSY = 20  # the same while deliveries arrive (~3 ms, about a commit)
IDLE_AFTER = 0.5  # seconds without commits before the background rebuilds all changed calls


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a record's table, and how a value goes in and comes back out."""

    name: str
    to_sql: Callable[[Any], Any]
    from_sql: Callable[[Any], Any]


def same(value: Any) -> Any:
    return value


# json.dumps() with an argument makes a new encoder at every call; this one writes the same text.
LIST_ENCODER = json.JSONEncoder(ensure_ascii=False)


def json_list(values: tuple[str, ...]) -> str:
    return LIST_ENCODER.encode(list(values))


def flag_or_none(value: Any) -> bool | None:
    return None if value is None else bool(value)


def column(name: str, kind: Any) -> Column:
    """The column of a record field of type `kind`: the field's own name, its value as SQLite
    keeps it (an enum as its value, a tuple of strings as a JSON array, a bool as 0 or 1)."""
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return Column(name, lambda value: value.value, kind)
    if typing.get_origin(kind) is tuple:
        return Column(name, json_list, lambda text: tuple(json.loads(text)))
    if kind is bool:
        return Column(name, int, bool)
    if kind == bool | None:
        return Column(name, same, flag_or_none)
    return Column(name, same, same)


def record_columns(record: type, *, besides: tuple[str, ...] = ()) -> tuple[Column, ...]:
    """A column for each field of the dataclass `record`, in its order, but those `besides`."""
    kinds = typing.get_type_hints(record)
    fields = dataclasses.fields(record)
    return tuple(column(f.name, kinds[f.name]) for f in fields if f.name not in besides)


# The calls and legs tables hold their records' fields, one column each (migration 9 has the
# same columns: tests/test_store.py holds them equal), then what the reports search or sum by.
CALL_FIELDS = record_columns(Call, besides=("legs", "events"))
CALL_SEARCHED: dict[str, Callable[[Call], Any]] = {
    "external_digits": lambda call: digits(call.external_number),
}
LEG_FIELDS = record_columns(CallLeg)
LEG_SEARCHED: dict[str, Callable[[CallLeg], Any]] = {
    "answered": lambda leg: leg.answered,
    "routing": lambda leg: leg.routing,
    "ring_us": lambda leg: leg.ring_us,
}


def values_as_stored(columns: tuple[Column, ...]) -> Callable[[Any], list[Any]]:
    """A function from a record to its columns' values as SQLite keeps them: the values read
    at once, then only those of a type SQLite has not converted (call building makes many)."""
    values = operator.attrgetter(*(c.name for c in columns))
    converted = [(at, c.to_sql) for at, c in enumerate(columns) if c.to_sql is not same]

    def as_stored(record: Any) -> list[Any]:
        row = list(values(record))
        for at, to_sql in converted:
            row[at] = to_sql(row[at])
        return row

    return as_stored


CALL_VALUES = values_as_stored(CALL_FIELDS)
LEG_VALUES = values_as_stored(LEG_FIELDS)
CALL_COLUMNS = ", ".join([*(c.name for c in CALL_FIELDS), *CALL_SEARCHED])
LEG_COLUMNS = ", ".join(["call_id", *(c.name for c in LEG_FIELDS), *LEG_SEARCHED])
INSERT_CALL = (
    f"INSERT OR REPLACE INTO calls ({CALL_COLUMNS}) "
    f"VALUES ({', '.join('?' * (len(CALL_FIELDS) + len(CALL_SEARCHED)))})"
)
INSERT_LEG = (
    f"INSERT INTO legs ({LEG_COLUMNS}) "
    f"VALUES ({', '.join('?' * (1 + len(LEG_FIELDS) + len(LEG_SEARCHED)))})"
)
LEG_FIELD_COLUMNS = ", ".join(c.name for c in LEG_FIELDS)


def call_fields_sql(status: str) -> str:
    """The calls table's CALL_FIELDS, to SELECT, with `status` for the stored status (the
    status now: CallQuery.status_sql)."""
    return ", ".join(status if c.name == "status" else f"calls.{c.name}" for c in CALL_FIELDS)


def call_row(call: Call) -> tuple[Any, ...]:
    """The calls-table row of a Call, in CALL_COLUMNS order."""
    return (*CALL_VALUES(call), *(searched(call) for searched in CALL_SEARCHED.values()))


def leg_rows(call: Call) -> list[tuple[Any, ...]]:
    """The legs-table rows of a Call's legs, in LEG_COLUMNS order."""
    return [
        (call.call_id, *LEG_VALUES(leg), *(searched(leg) for searched in LEG_SEARCHED.values()))
        for leg in call.legs
    ]


# The events a call is built from, in their order (the ? is its CallID).
EVENTS_OF_CALL = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE call_id = ? AND {CALL_EVENTS_SQL} "
    "ORDER BY order_us, id"
)


def readable_call(
    row: Sequence[Any], legs: Sequence[Sequence[Any]] = (), events: tuple[Event, ...] = ()
) -> Call | None:
    """call_from_row(), or None where a value of the row does not read or show (the file
    edited or damaged): the calls are derived, and built again from their events then
    (call_again)."""
    try:
        call = call_from_row(row, legs, events)
        call_json(call)
    except READ_FAILURES:
        return None
    return call


def call_record(row: Sequence[Any]) -> dict[str, Any] | None:
    """call_json() of a list's row (no legs, no events), or None where a value of the row does
    not read or show (readable_call)."""
    try:
        return call_json(call_from_row(row), with_details=False)
    except READ_FAILURES:
        return None


def call_again(
    event_rows: Sequence[Sequence[Any]], *, now_us: int, unknown_after_us: int
) -> Call | None:
    """A call whose row does not read, built again from its events' rows (EVENTS_OF_CALL) as
    of `now_us`; None where it has none (a call of the PBX's history), which the log says."""
    if not event_rows:
        logging.getLogger("receiver").warning(
            "a call's row does not read (edited by hand? damaged?) and it has no events to be "
            "built again from: `receiver rebuild` replaces it"
        )
        return None
    events = [event_from_row(row) for row in event_rows]
    return build_call(events, now_us=now_us, unknown_after_us=unknown_after_us)


def call_from_row(
    row: Sequence[Any], legs: Sequence[Sequence[Any]] = (), events: tuple[Event, ...] = ()
) -> Call:
    """A Call from its fields as selected in CALL_FIELDS order, with the legs (rows of
    LEG_FIELD_COLUMNS) and events given: the list gives none, one call all of them."""
    values = {c.name: c.from_sql(value) for c, value in zip(CALL_FIELDS, row, strict=True)}
    built = tuple(
        CallLeg(**{c.name: c.from_sql(v) for c, v in zip(LEG_FIELDS, leg, strict=True)})
        for leg in legs
    )
    return Call(**values, legs=built, events=events)
