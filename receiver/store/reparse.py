"""Stored events parsed again from their raw requests, after a parser fix (`rebuild --reparse`).

Each event is parsed again with the current parser, as a delivery of its own myid (the query's,
else the one it was stored under: `--default-myid`, replay's `--myid`), received when and from
where it was. What came out other than stored is written back in place: its id, raw request,
time of receipt, source and repeat count stay. Its de-dup key is made again too, so a re-parse
that makes two stored events one event (the same key) keeps the lower id, counts the other as
a repeat of it (its own repeats too) and deletes it. A raw request the current parser refuses
stays exactly as stored.
"""

from __future__ import annotations

import dataclasses
import enum
import sqlite3

from receiver.event import Event, stored_row
from receiver.parse import Rejected, parse_request
from receiver.store.queries import Reparsed
from receiver.store.schema import CALL_EVENTS_SQL, EVENT_COLUMNS, event_from_row
from receiver.stored import STORED_FIELDS

EVENTS_AT_ONCE = 500  # events parsed again per turn at the write lock (~15 ms)
# What a re-parse never changes: how the delivery came, and how often.
KEPT = ("id", "received_at_us", "source", "raw_method", "raw_query", "raw_body",
        "raw_content_type", "raw_packing", "duplicates")  # fmt: skip
PARSED = tuple(name for name in STORED_FIELDS if name not in KEPT)
PARSED_AT = tuple(STORED_FIELDS.index(name) for name in PARSED)
UPDATE_PARSED = (
    f"UPDATE events SET {', '.join(f'{name} = ?' for name in PARSED)}, dedup_key = ? WHERE id = ?"
)
HOLDER = "SELECT id FROM events WHERE dedup_key = ?"


class Outcome(enum.Enum):
    """What parsing one stored event again did to it."""

    SAME = "same"  # the current parser makes it exactly as stored
    CHANGED = "changed"  # written again as the current parser makes it
    MERGED = "merged"  # the same event as one with a lower id: counted there as a repeat, gone
    REFUSED = "refused"  # the current parser refuses its raw request: kept as stored
    HELD = "held"  # its new key is an event's that is refused or held: kept as stored
    GONE = "gone"  # no such event (any more)


def reparsed(stored: Event) -> Event:
    """A stored event as the current parser makes it from its raw request, with its id, raw
    request, receipt, source and repeats. Raises Rejected when the parser refuses it."""
    event, _ = parse_request(
        stored.raw,
        received_at_us=stored.received_at_us,
        source=stored.source,
        default_myid=stored.myid,  # the myid it was stored under, when its query has none
    )
    # The raw request stays byte for byte as stored (the parser would only cut a token
    # from it, and a stored one has none).
    return dataclasses.replace(event, raw=stored.raw, id=stored.id, duplicates=stored.duplicates)


def placeholder(event_id: int) -> bytes:
    """A key no event has (15 bytes, where keys have 24), held by an event while the key
    it is to take is being freed, so that it is found under neither its old nor its new one."""
    return b"reparse" + event_id.to_bytes(8, "big")


class Reparse:
    """Parse stored events again on `db`, inside a write transaction the caller holds."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.counts = Reparsed()
        self.old_calls: set[str] = set()  # calls that lost an event: kept only if any remain
        self.at = 0  # the id whose turn it is

    def batch(self, after: int, up_to: int, limit: int) -> Reparsed:
        """Parse again up to `limit` events of ids over `after` and up to `up_to`."""
        ids = self.db.execute(
            "SELECT id FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (after, up_to, limit),
        ).fetchall()
        for (event_id,) in ids:
            self.at = event_id
            outcome = self.settle(event_id)
            # What writes is counted where it happens, also for an event settled ahead of its
            # turn (below); the rest here, where each event has its turn once. One merged away
            # ahead of its turn is gone by then: it was read.
            if outcome is not Outcome.GONE:
                self.counts.read += 1
            if outcome is Outcome.REFUSED:
                self.counts.refused += 1
            elif outcome is Outcome.HELD:
                self.counts.held += 1
        self.drop_empty_calls()
        self.counts.last_id = ids[-1][0] if ids else up_to
        return self.counts

    def settle(self, event_id: int) -> Outcome:
        """Make one stored event what the current parser makes of it, merging repeats."""
        db = self.db
        found = self.load(event_id)
        if found is None:
            return Outcome.GONE
        stored, stored_key = found
        try:
            event = reparsed(stored)
        except Rejected:
            return Outcome.REFUSED
        key = event.dedup_key()
        if stored_key == key:
            if event == stored:
                return Outcome.SAME
            self.write(stored, event, key)
            return Outcome.CHANGED
        db.execute(
            "UPDATE events SET dedup_key = ? WHERE id = ?", (placeholder(event_id), event_id)
        )
        while (holding := db.execute(HOLDER, (key,)).fetchone()) is not None:
            holder: int = holding[0]
            # The holder first becomes what the current parser makes of it (it may move off
            # the key); one not yet reached is so settled ahead of its turn.
            if self.settle(holder) in (Outcome.REFUSED, Outcome.HELD):
                db.execute("UPDATE events SET dedup_key = ? WHERE id = ?", (stored_key, event_id))
                return Outcome.HELD
            still = self.load(holder)
            if still is None or still[1] != key:
                continue  # it moved off the key: look again
            # The same event twice: the lower id stays, and counts the other as a repeat.
            if holder < event_id:
                self.merge(into=holder, gone=stored)
                return Outcome.MERGED
            self.merge(into=event_id, gone=still[0])
        self.write(stored, event, key)
        return Outcome.CHANGED

    def load(self, event_id: int) -> tuple[Event, bytes] | None:
        """A stored event and its de-dup key, or None."""
        row = self.db.execute(
            f"SELECT {EVENT_COLUMNS}, dedup_key FROM events WHERE id = ?", (event_id,)
        ).fetchone()
        return None if row is None else (event_from_row(row[:-1]), bytes(row[-1]))

    def write(self, stored: Event, event: Event, key: bytes) -> None:
        """Store the re-parsed columns and key of an event in its row (its repeats are counted
        in the row by merge())."""
        row = stored_row(event, event.id)
        self.db.execute(UPDATE_PARSED, (*(row[at] for at in PARSED_AT), key, event.id))
        self.counts.changed += 1
        if stored.call_id is not None:  # it may have left its call (another CallID or type)
            self.old_calls.add(stored.call_id)

    def merge(self, *, into: int, gone: Event) -> None:
        """Count the event `gone` (and its repeats) as repeats of the event `into`; delete it."""
        self.db.execute(
            "UPDATE events SET duplicates = duplicates + 1 + "
            "(SELECT duplicates FROM events WHERE id = ?1) WHERE id = ?2",
            (gone.id, into),
        )
        self.db.execute("DELETE FROM events WHERE id = ?", (gone.id,))
        # Its id was answered to the PBX once: no later event may have it.
        self.db.execute("UPDATE retired_ids SET top = max(top, ?)", (gone.id,))
        self.counts.merged += 1
        if gone.id is not None and gone.id > self.at:
            self.counts.read += 1  # ahead of its turn, which it will not have
        if gone.call_id is not None:
            self.old_calls.add(gone.call_id)

    def drop_empty_calls(self) -> None:
        """Delete the built calls that no event of theirs is left to make."""
        if not self.old_calls:
            return
        ids = sorted(self.old_calls)
        marks = ", ".join("?" * len(ids))
        empty = [
            call_id
            for (call_id,) in self.db.execute(
                f"SELECT call_id FROM calls WHERE call_id IN ({marks}) AND NOT EXISTS (SELECT 1 "
                f"FROM events WHERE events.call_id = calls.call_id AND {CALL_EVENTS_SQL})",
                ids,
            )
        ]
        if empty:
            marks = ", ".join("?" * len(empty))
            self.db.execute(f"DELETE FROM legs WHERE call_id IN ({marks})", empty)
            self.db.execute(f"DELETE FROM calls WHERE call_id IN ({marks})", empty)
