"""Storage: the only package that speaks SQL.

backend.py has the interface every backend gives (Storage) and open_storage(), which picks one
from --db. The SQLite backend is the rest: schema.py has the tables and their migrations,
upgrade.py an upgrade of a whole file with its progress, queries.py what listings ask for,
database.py the Store (one group-committing writer and a reader), writer.py the writes, made on
a thread or in a process of their own, export.py the server's export workers, upkeep.py sizes
and prunes, and backup.py online copies.
"""

from receiver.store.backend import Storage, open_storage
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
    "Storage",
    "Store",
    "StoreClosed",
    "Stored",
    "migrate",
    "open_storage",
    "parse_call_cursor",
    "parse_cursor",
]
