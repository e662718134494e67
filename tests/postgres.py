"""A PostgreSQL database of its own for each test that needs one, on the server that
RECEIVER_TEST_POSTGRESQL names (the local one by default).

Without a server the test is skipped, saying why; under CI (CI=true) it fails instead, since the
build machines have one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

SERVER_URL = os.environ.get(
    "RECEIVER_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def with_database(url: str, name: str) -> str:
    """`url` naming the database `name` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def unavailable(reason: str) -> None:
    """Skip (or, under CI, fail) a test that needs the server."""
    message = f"no PostgreSQL at {SERVER_URL} ({reason}): start one or set RECEIVER_TEST_POSTGRESQL"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def create_database() -> str:
    """A new, empty database on the test server; its URL."""
    psycopg = pytest.importorskip("psycopg")
    name = f"receiver_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        unavailable(str(error).strip().splitlines()[0])
    return with_database(SERVER_URL, name)


def drop_database(url: str) -> None:
    """Drop a database create_database() made, whoever is still connected to it."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """The URL of a new PostgreSQL database, dropped at the end."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)
