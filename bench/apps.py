"""Baselines for bench/ingest.py: the same delivery answered bare, or committed one by one.

Run as `python bench/apps.py bare|naive PORT [DB]`.
"""

from __future__ import annotations

import sqlite3
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def read_fields(request: Request) -> dict[str, str]:
    """The delivery's fields: the query string for GET, the form body for POST."""
    fields = dict(request.query_params)
    if request.method == "POST":
        fields.update((await request.form())._dict)  # type: ignore[attr-defined]
    return fields


def bare() -> Starlette:
    """Reads the delivery and answers 200, storing nothing: the ceiling."""

    async def webhook(request: Request) -> JSONResponse:
        fields = await read_fields(request)
        return JSONResponse({"ok": True, "fields": len(fields)})

    return Starlette(routes=[Route("/webhook", webhook, methods=["GET", "POST"])])


def naive(db: str) -> Starlette:
    """Commits each delivery on its own, as most integrations do (same WAL and sync settings)."""
    connection = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    connection.executescript(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, myid TEXT, "
        "event_type TEXT, event_time INTEGER, call_id TEXT, payload TEXT);"
    )

    async def webhook(request: Request) -> JSONResponse:
        fields = await read_fields(request)
        cursor = connection.execute(
            "INSERT INTO events (myid, event_type, event_time, call_id, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                fields.get("myid"),
                fields.get("EventType"),
                fields.get("EventTime"),
                fields.get("CallID"),
                str(fields),
            ),
        )
        return JSONResponse({"ok": True, "id": cursor.lastrowid})

    return Starlette(routes=[Route("/webhook", webhook, methods=["GET", "POST"])])


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = bare() if kind == "bare" else naive(sys.argv[3])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
