"""The storage interface: what the receiver asks of its database, whatever engine keeps it.

`Storage` is every operation the web app, the commands and replay use, and nothing else may be
asked of a store; `open_storage()` picks the backend from `--db`. A path is an SQLite file
(database.py); a `postgresql://` URL is a PostgreSQL database (postgresql.py), which several
receivers may share. The storage tests run on each through the `storage` fixture
(tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Protocol

from receiver.calls import DEFAULT_UNKNOWN_AFTER_US, Call
from receiver.event import Event, Reject
from receiver.store.backup import DEFAULT_RATE, BackedUp
from receiver.store.outbox import Delivery, DeliveryQuery, Forwarding, Outcome, Trimmed
from receiver.store.queries import CallQuery, CallsState, EventQuery, Page, Reparsed, Stored
from receiver.store.upkeep import Pruned, Sizes, WriterState

# A --db that names a server by URL rather than a file: `postgresql://user@host/db`. (Read from
# the text: as a Path, the URL's `//` has become one `/`.)
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/")
POSTGRESQL = ("postgresql", "postgres")


def is_postgresql(db: Path | str) -> bool:
    """Whether --db names a PostgreSQL database (`postgresql://...`), not an SQLite file."""
    found = URL_SCHEME.match(str(db))
    return found is not None and found[1].lower() in POSTGRESQL


def shown_db(db: Path | str) -> str:
    """The database as logs and messages name it: a file's absolute path, a URL without its
    password."""
    if is_postgresql(db):
        from receiver.store.postgresql import shown_url

        return shown_url(str(db))
    return str(Path(db).absolute())


# A libpq connection string (`host=... dbname=...`): no path, and no URL either.
CONNINFO = re.compile(r"\s*(host|hostaddr|dbname|user|port|password|service)\s*=", re.IGNORECASE)


def unsupported(db: Path | str) -> str | None:
    """What is wrong with a --db that names a backend this receiver does not have, or None."""
    if isinstance(db, str) and CONNINFO.match(db):
        return (
            f"--db {db.split()[0]} ...: a libpq key=value connection string, which this "
            "receiver would take for an SQLite file's name: give the same database as a "
            "postgresql://user:password@host:5432/dbname URL"
        )
    found = URL_SCHEME.match(str(db))
    if found is None or is_postgresql(db):
        return None
    return (
        f"--db {found[1]}://...: not a database this receiver knows: give the path of an "
        "SQLite file, or a postgresql://user:password@host:5432/dbname URL"
    )


class StorageUnavailable(RuntimeError):
    """The database cannot be reached or used now (a server that went away): the request that
    met it gets a 503, and the next ones try again."""


class Storage(Protocol):
    """A receiver's database: group-committed writes, derived calls, reads."""

    async def __aenter__(self) -> Storage: ...

    async def __aexit__(self, *exc: object) -> None: ...

    # Writing: each returns (or resolves) once what it stored is durable.

    async def add_event(self, event: Event) -> Stored: ...

    async def add_reject(self, reject: Reject) -> None: ...

    def submit_events(self, events: list[Event]) -> list[asyncio.Future[Stored]]: ...

    # Upkeep: the calls, derived from the events.

    async def refresh_calls(self, *, background: bool = False) -> int: ...

    async def rebuild_calls(self, progress: Callable[[int, int], None] | None = None) -> int: ...

    async def calls_state(self) -> CallsState: ...

    async def reparse_events(self, progress: Callable[[int, int], None] | None = None) -> Reparsed:
        """Every stored event parsed again from its raw request by this receiver's parser."""
        ...

    async def check(self) -> int: ...

    # The PBX's call history: the source of the calls none of whose events came.

    async def add_history_calls(self, records: list[tuple[str, str]]) -> list[str]:
        """Keep the records (call id in lower case, the record's JSON) of calls without events
        and build their calls; per record `matched` (its events are here), `filled` or `known`."""
        ...

    async def claim_reconcile(self, holder: str, seconds: float) -> str | None:
        """The one reconciler's lease: None when `holder` has it now, else who does."""
        ...

    async def release_reconcile(self, holder: str) -> None: ...

    # The outbox of forwarded messages (receiver/forward/). A backend writes a new event's
    # `event.received` messages (forward.messages.event_messages) in the transaction that
    # stores the event, and a call's messages (call_messages) in the one that changes the
    # call, for the routes it was opened with (`forwarding`) or, without, those it keeps.
    # A message waits for the earlier ones of its call and destination (the first one not yet
    # delivered is the only one that can be claimed), and one claimed is leased: until the
    # lease ends, nobody else claims it (SQLite: the claim is a write transaction; PostgreSQL:
    # SELECT ... FOR UPDATE SKIP LOCKED), so two servers never send the same attempt at once.

    async def forward_step(
        self,
        destination: str,
        holder: str,
        outcomes: list[Outcome],
        *,
        limit: int,
        lease_seconds: float,
    ) -> list[Delivery]:
        """Record `holder`'s attempts (their rows' new status, when to try again, a 410's
        disabling of the destination), then lease up to `limit` due messages of `destination`
        to it, in one transaction. An outcome for a row whose lease went to another is
        ignored."""
        ...

    async def forward_release(self, holder: str) -> int:
        """Give back the leases `holder` has (its server started again); how many."""
        ...

    async def forward_counts(self) -> list[dict[str, Any]]:
        """Per destination: pending and dead messages, the oldest pending, whether disabled."""
        ...

    async def forward_trim(self, max_rows: int) -> Trimmed:
        """Keep at most `max_rows` messages: the oldest delivered go first, then the oldest
        dead, then the oldest pending (the caller logs those)."""
        ...

    async def retry_deliveries(
        self, destination: str | None = None, since_us: int | None = None
    ) -> int:
        """Dead messages due again with a new round of attempts; their destinations enabled."""
        ...

    async def replay_deliveries(
        self,
        since_us: int,
        until_us: int,
        destination: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """`event.received` of every event received in [since_us, until_us) due again (or
        written, when missing), to each destination that takes it (or only `destination`)."""
        ...

    async def list_deliveries(
        self, query: DeliveryQuery, *, limit: int = 100, before: int | None = None
    ) -> Page: ...

    async def get_delivery_body(self, row_id: int) -> tuple[str, bytes] | None: ...

    # Operations: health, sizes, retention, backups.

    async def check_writable(self) -> None:
        """Raise unless a write could be made now (the writer runs, the lock can be taken)."""
        ...

    def writer_state(self) -> WriterState: ...

    async def sizes(self) -> Sizes: ...

    async def newest_events(self) -> dict[str, int]:
        """Each myid's newest event time (µs since the epoch: EventTime, or receipt)."""
        ...

    async def prune(
        self,
        before_us: int,
        *,
        keep_calls: bool = False,
        dry_run: bool = False,
        progress: Callable[[Pruned], None] | None = None,
    ) -> Pruned:
        """Remove the events from before `before_us` and the calls made only of them, in small
        batches beside the live writes, and give the space back."""
        ...

    async def backup(
        self,
        dest: Path,
        progress: Callable[[int, int], None] | None = None,
        rate: float | None = DEFAULT_RATE,
    ) -> BackedUp:
        """A consistent, checked copy of the whole database as the new file `dest`, written at
        most `rate` bytes a second (None: as fast as it goes). SQLite's: a server database is
        backed up with its own tools (docs/deploy.md)."""
        ...

    # Reading: never writes.

    async def get_event(self, event_id: int) -> Event | None: ...

    async def get_event_record(self, event_id: int) -> dict[str, Any] | None: ...

    async def list_events(
        self, query: EventQuery | None = None, *, limit: int = 100, after: str | None = None
    ) -> Page: ...

    async def list_event_records(
        self, query: EventQuery, *, limit: int = 100, after: str | None = None
    ) -> Page: ...

    def iter_event_lines(
        self, query: EventQuery, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[bytes]: ...

    def iter_event_records(
        self, query: EventQuery, *, after: str | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...

    def iter_events(
        self, query: EventQuery, *, after: str | None = None
    ) -> AsyncIterator[Event]: ...

    async def count_calls(self) -> int: ...

    async def get_call(
        self, call_id: str, *, now_us: int, unknown_after_us: int = DEFAULT_UNKNOWN_AFTER_US
    ) -> Call | None: ...

    async def list_calls(
        self, query: CallQuery, *, limit: int = 100, after: str | None = None
    ) -> Page: ...

    def iter_calls(
        self, query: CallQuery, *, after: str | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def missed_report(self, query: CallQuery) -> list[dict[str, Any]]: ...

    async def waiting_numbers(
        self, query: CallQuery, *, limit: int
    ) -> tuple[list[dict[str, Any]], int]: ...

    async def extensions_report(
        self, query: CallQuery, *, by: str | None = None, place: tzinfo = UTC
    ) -> list[dict[str, Any]]: ...

    async def calls_by_period(
        self, query: CallQuery, *, by: str, place: tzinfo = UTC
    ) -> list[dict[str, Any]]: ...

    async def events_after(self, event_id: int, *, limit: int) -> list[dict[str, Any]]: ...

    async def calls_of_events(
        self, after_event: int, through_event: int, *, now_us: int, unknown_after_us: int
    ) -> list[dict[str, Any]]: ...

    async def list_rejects(self, *, limit: int = 100, before: int | None = None) -> Page: ...


def open_storage(
    db: Path | str,
    *,
    rejects_max: int = 10_000,
    rejects_max_bytes: int = 64 << 20,
    own_process: bool = False,
    bulk: bool = False,
    on_commit: Callable[[int], None] | None = None,
    forwarding: Forwarding | None = None,
) -> Storage:
    """The storage `db` names (not opened yet: `async with` it): an SQLite file, or a
    PostgreSQL database by its URL (given as text: a Path would have made its `//` one `/`).
    `bulk`: for a command storing many events (replay), bigger commits and, on SQLite, a
    writer process of its own fed with rows made in this one. Raises ValueError for a backend
    this receiver does not have."""
    from receiver.store.database import Store

    problem = unsupported(db)
    if problem:
        raise ValueError(problem)
    if is_postgresql(db):
        from receiver.store.postgresql import PostgresStore

        return PostgresStore(
            str(db),
            rejects_max,
            rejects_max_bytes=rejects_max_bytes,
            bulk=bulk,
            on_commit=on_commit,
            forwarding=forwarding,
        )
    return Store(
        Path(db),
        rejects_max,
        rejects_max_bytes=rejects_max_bytes,
        own_process=own_process,
        bulk=bulk,
        on_commit=on_commit,
        forwarding=forwarding,
    )
