"""SQLite storage: the only package that speaks SQL.

schema.py has the tables and their migrations, upgrade.py an upgrade of a whole file with its
progress, queries.py what listings ask for, database.py the Store: one group-committing writer
and a reader, and writer.py the writes themselves, made on a thread or in a process of their
own.
"""

from receiver.store.database import Store, StoreClosed
from receiver.store.queries import (
    CALL_CURSOR_PATTERN,
    EVENT_CURSOR_PATTERN,
    CallQuery,
    EventQuery,
    Page,
    Stored,
    parse_call_cursor,
    parse_cursor,
)
from receiver.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate

__all__ = [
    "CALL_CURSOR_PATTERN",
    "EVENT_CURSOR_PATTERN",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CallQuery",
    "EventQuery",
    "Page",
    "Store",
    "StoreClosed",
    "Stored",
    "migrate",
    "parse_call_cursor",
    "parse_cursor",
]
