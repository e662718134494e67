"""The SQL the backends share (queries.py's conditions, upkeep.py's prune, reparse.py's
batches), written for SQLite, as PostgreSQL takes it.

The shared statements use SQLite's `?` and `?N` parameters and a few of its functions; here
they become psycopg's `%s` and `%(pN)s` and PostgreSQL's own. `SqliteLike` gives a psycopg
connection the small part of sqlite3's interface those modules use (execute, fetchone,
fetchall, rowcount), so that a prune or a re-parse is the same code on either backend.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import psycopg

NUMBERED = re.compile(r"\?(\d+)")
# SQLite's functions, and what PostgreSQL calls them.
FUNCTIONS = (
    ("UPDATE retired_ids SET top = max(top, ?)", "UPDATE retired_ids SET top = greatest(top, ?)"),
    (
        "json_each(filled.myids) AS mine",
        "json_array_elements_text(filled.myids::json) AS mine(value)",
    ),
    ("SELECT value FROM json_each(?)", "SELECT value FROM json_array_elements_text(?::json)"),
)


@functools.lru_cache(maxsize=1024)
def translated(sql: str) -> tuple[str, bool]:
    """`sql` (SQLite's) as PostgreSQL takes it, and whether its parameters are numbered."""
    for sqlite, postgresql in FUNCTIONS:
        sql = sql.replace(sqlite, postgresql)
    sql = sql.replace("%", "%%")
    if NUMBERED.search(sql):
        return NUMBERED.sub(r"%(p\1)s", sql), True
    return sql.replace("?", "%s"), False


def statement(sql: str, params: Sequence[Any] = ()) -> tuple[str, Any]:
    """A statement and its parameters, SQLite's, as psycopg takes them."""
    text, numbered = translated(sql)
    params = params_without_nul(params)
    if numbered:
        return text, {f"p{at}": value for at, value in enumerate(params, start=1)}
    return text, list(params)


class SqliteLike:
    """A psycopg connection (in a transaction of the caller's) as sqlite3's, for the shared
    statements: `execute()` returns a cursor with fetchone, fetchall, rowcount and iteration;
    `executemany()` as sqlite3's."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        text, values = statement(sql, params)
        return self.connection.execute(text, values)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        text, _ = translated(sql)
        with self.connection.cursor() as cursor:
            cursor.executemany(text, [statement(sql, row)[1] for row in rows])


# PostgreSQL's text cannot hold the character NUL, which SQLite's can (a delivery's field may
# carry one: `CallerIDName=a%00b`). On PostgreSQL it is kept as U+FFFD, the replacement
# character; the raw request, a bytea, keeps the byte itself. A search for a value with a NUL
# finds what was stored for it.
NUL = "\x00"
REPLACEMENT = "\ufffd"


def without_nul(value: Any) -> Any:
    """A value as PostgreSQL can keep it: NUL in text (or in a list's texts) replaced."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value
    if isinstance(value, list | tuple) and any(
        isinstance(item, str) and NUL in item for item in value
    ):
        return type(value)(without_nul(item) for item in value)
    return value


def params_without_nul(params: Sequence[Any]) -> list[Any]:
    return [without_nul(value) for value in params]
