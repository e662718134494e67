"""Shared fixtures: the real samples, an app on a real SQLite file, a real server process."""

from __future__ import annotations

import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from receiver.event import Event, stored_row
from receiver.packing import DEFLATED, deflate
from receiver.settings import Settings
from receiver.store import Storage, migrate, open_storage
from receiver.store.schema import event_row, insert_events
from receiver.stored import STORED_FIELDS
from receiver.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "samples"  # real deliveries, the PBX's own examples


def sample(name: str) -> str:
    """One real delivery's query string."""
    return (SAMPLES / f"{name}.txt").read_text().strip()


# The events columns before schema version 12, which kept the raw request as received.
COLUMNS_BEFORE_PACKING = [name for name in STORED_FIELDS if name != "raw_packing"]


def insert_as_before_packing(
    connection: sqlite3.Connection, event: Event, event_id: int, key: bytes
) -> None:
    """Store an event as a receiver before schema version 12 did (and one of those beside a
    newer one still does): the raw request as received, no raw_packing."""
    row = dict(zip(STORED_FIELDS, stored_row(event, event_id), strict=True))
    values = [row[name] for name in COLUMNS_BEFORE_PACKING]
    marks = ", ".join("?" * (len(values) + 1))
    connection.execute(
        f"INSERT INTO events ({', '.join(COLUMNS_BEFORE_PACKING)}, dedup_key) VALUES ({marks})",
        [*values, key],
    )


def deflated_row(event: Event, event_id: int, key: bytes) -> tuple[Any, ...]:
    """The row a receiver of schema versions 12 to 16 stored: its raw request deflated."""
    row = dict(zip([*STORED_FIELDS, "dedup_key"], event_row(event, event_id, key), strict=True))
    row.update(
        raw_query=deflate(event.raw.query), raw_body=deflate(event.raw.body), raw_packing=DEFLATED
    )
    return tuple(row.values())


def stored_by_version(db_path: Path, version: int, events: list[Event]) -> None:
    """A database of schema `version` holding `events` (ids from 1) as that version stored
    them, with none of their calls built yet."""
    with sqlite3.connect(db_path) as old:
        migrate(old, target=version)
        for event_id, stored in enumerate(events, start=1):
            key = stored.dedup_key()
            if version < 6:  # a key was the hash alone, without EventTime in front
                key = key[8:]
            if version < 12:
                insert_as_before_packing(old, stored, event_id, key)
            elif version < 17:
                old.execute(insert_events(1), deflated_row(stored, event_id, key))
            else:
                old.execute(insert_events(1), event_row(stored, event_id, key))
        if 2 <= version < 7:
            old.execute(
                "INSERT INTO calls_dirty SELECT DISTINCT call_id FROM events "
                "WHERE call_id IS NOT NULL"
            )


def wait_for_calls(get: Callable[[str], httpx.Response], seconds: float = 30) -> dict[str, object]:
    """Wait until the server's background work has built the calls of every stored event (reads
    do not build them), as its /healthz says; returns what it says."""
    deadline = time.monotonic() + seconds
    while True:
        calls: dict[str, object] = get("/healthz").json()["calls"]
        if not calls["rebuilding"] and calls["built_to_event"] == calls["events"]:
            return calls
        if time.monotonic() > deadline:
            raise RuntimeError(f"the calls were not built within {seconds} s: {calls}")
        time.sleep(0.02)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "receiver.db"


# The ways a storage can be had: each backend (and, for SQLite, its writer on a thread or in a
# process of its own). The storage tests (tests/test_storage.py) run on every one.
STORAGES = ["sqlite-writer-thread", "sqlite-writer-process", "postgresql"]

# The PostgreSQL server the tests make their databases on (a user that may CREATE DATABASE).
POSTGRESQL_URL = os.environ.get(
    "RECEIVER_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def with_dbname(url: str, dbname: str) -> str:
    """The postgresql:// URL of another database on the same server. (A URL, as --db takes it:
    a libpq `key=value` string is no URL, and a receiver given one would take it for the path
    of an SQLite file.)"""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))


class PostgresqlDatabases:
    """Databases for the tests, each made from a template migrated once: a thread keeps
    READY_AHEAD of them made ahead and drops those the tests are done with (a CREATE DATABASE
    takes about a second on a busy disk, most of it waiting for it)."""

    READY_AHEAD = 2

    def __init__(self, admin_url: str) -> None:
        import queue
        import threading

        self.admin_url = admin_url
        self.template = f"receiver_template_{os.getpid()}"
        self.ready: queue.Queue[str] = queue.Queue()
        self.done: queue.Queue[str | None] = queue.Queue()
        self.wanted = threading.Semaphore(self.READY_AHEAD)
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        import asyncio
        import concurrent.futures

        import psycopg

        from receiver.store.pg_schema import migrate

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.template}")
            admin.execute(f"CREATE DATABASE {self.template} TEMPLATE template0 ENCODING 'UTF8'")

        async def prepare() -> None:
            url = with_dbname(self.admin_url, self.template)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
                await migrate(connection)

        # On a thread of its own: the first test to ask may be running in an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as migrating:
            migrating.submit(asyncio.run, prepare()).result()
        self.thread.start()

    def run(self) -> None:
        import queue

        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            while True:
                try:
                    gone = self.done.get_nowait()
                    if gone is None:
                        return
                    admin.execute(f"DROP DATABASE IF EXISTS {gone} WITH (FORCE)")
                    continue
                except queue.Empty:
                    pass
                if self.wanted.acquire(timeout=0.05):
                    name = f"receiver_test_{uuid.uuid4().hex[:16]}"
                    admin.execute(f"CREATE DATABASE {name} TEMPLATE {self.template}")
                    self.ready.put(name)

    def take(self) -> str:
        """A new database's URL, the test's own."""
        name = self.ready.get(timeout=60)
        self.wanted.release()
        return name

    def give_back(self, name: str) -> None:
        self.done.put(name)

    def stop(self) -> None:
        import psycopg

        self.done.put(None)
        self.thread.join(timeout=120)
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            while not self.ready.empty():
                admin.execute(f"DROP DATABASE IF EXISTS {self.ready.get()} WITH (FORCE)")
            while not self.done.empty():
                name = self.done.get()
                if name is not None:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP DATABASE IF EXISTS {self.template} WITH (FORCE)")


def postgresql_answers() -> None:
    """Skip (fail under CI=true) unless a server answers at RECEIVER_TEST_POSTGRESQL."""
    import psycopg

    try:
        psycopg.connect(POSTGRESQL_URL, autocommit=True, connect_timeout=3).close()
    except psycopg.Error as error:
        reason = f"no PostgreSQL server at RECEIVER_TEST_POSTGRESQL={POSTGRESQL_URL}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def postgresql_databases() -> Iterator[PostgresqlDatabases]:
    """Where the tests' PostgreSQL databases come from. Skips when no server answers at
    RECEIVER_TEST_POSTGRESQL, fails under CI=true."""
    postgresql_answers()
    databases = PostgresqlDatabases(POSTGRESQL_URL)
    databases.start()
    try:
        yield databases
    finally:
        databases.stop()


@pytest.fixture
def postgresql_db(postgresql_databases: PostgresqlDatabases) -> Iterator[str]:
    """The URL of a new database of the test's own (made from the migrated template), dropped
    after it."""
    name = postgresql_databases.take()
    try:
        yield with_dbname(POSTGRESQL_URL, name)
    finally:
        postgresql_databases.give_back(name)


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Storage]:
    """`storage(**options)`: a new, unopened Storage on one database of the backend, each call
    on the same database (to reopen it)."""
    own_process = request.param == "sqlite-writer-process"
    db: Path | str = tmp_path / "storage.db"
    if request.param == "postgresql":
        db = request.getfixturevalue("postgresql_db")

    def make(**options: Any) -> Storage:
        return open_storage(db, own_process=own_process, **options)

    return make


# The backends the HTTP tests run on where a test file asks for both (its own `backend`
# fixture, parametrised with BACKENDS): tests/test_api.py and tests/test_app.py.
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def backend() -> str:
    """The backend of the test's database (`database`): SQLite, unless the file asks for more."""
    return "sqlite"


def both_backends(request: pytest.FixtureRequest) -> str:
    """A file's `backend` fixture over BACKENDS; a test that opens the SQLite file itself (it
    asks for db_path) runs on SQLite only."""
    if request.param == "postgresql" and "db_path" in request.fixturenames:
        pytest.skip("reads or writes the SQLite file itself")
    return str(request.param)


@pytest.fixture
def database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Path | str:
    """The test's database: the SQLite file db_path, or a PostgreSQL database of its own."""
    if backend == "postgresql":
        return str(request.getfixturevalue("postgresql_db"))
    return tmp_path / "receiver.db"


@pytest.fixture
def make_client(database: Path | str) -> Iterator[object]:
    """Build a TestClient (lifespan running) for the given settings on the test's database."""
    clients: list[TestClient] = []

    def make(**settings: object) -> TestClient:
        settings.setdefault("db", database)
        client = TestClient(create_app(Settings(**settings)))  # type: ignore[arg-type]
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:  # type: ignore[no-untyped-def]
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`receiver serve` as a real subprocess on a free port."""

    def __init__(
        self, db: Path, *args: str, log_dir: Path | None = None, open_files: int | None = None
    ) -> None:
        self.db = db
        self.open_files = open_files  # the soft open-file limit it starts with, if not ours
        self.log_dir = log_dir or db.parent
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "receiver", "serve", "--db", str(self.db)]
        return [*command, "--port", str(self.port), "--log-level", "warning", *self.args]

    def start(self, ready: str = "/healthz") -> ServerProcess:
        return self.launch().wait_ready(ready)

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it to answer (several can start together)."""
        command = self.command()
        self.log = self.log_dir / f"server-{self.port}.log"  # a file: a pipe could fill and block
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ},
                preexec_fn=self.limit_open_files if self.open_files else None,
            )
        return self

    def wait_ready(self, ready: str = "/healthz") -> ServerProcess:
        """Wait until `ready` answers 200; raise with the log if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}{ready}", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not answer {ready} within 20 s")

    def limit_open_files(self) -> None:
        """In the child, before exec: a lower soft open-file limit (the hard one stays)."""
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def stop(self, sig: int = 15) -> tuple[int, str]:
        """Send `sig`, wait for the exit; the exit code and what the server logged."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        return code, self.log.read_text()


class PbxProcess(ServerProcess):
    """`receiver-pbx serve` (the emulator) as a real subprocess on a free port."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pbx_emulator", "serve", "--port", str(self.port),
                *self.args]  # fmt: skip


def process_starter(make: Callable[..., ServerProcess]) -> Iterator[object]:
    """A fixture's `start(*args)`; every process it started is killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        started.append(make(*args))
        return started[-1]

    yield start
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.stop(9)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[object]:
    """Start `receiver-pbx serve` processes."""
    yield from process_starter(
        lambda *args: PbxProcess(tmp_path / "unused.db", *args).start("/emulator/state")
    )


@pytest.fixture
def server(db_path: Path) -> Iterator[object]:
    """Start `receiver serve` processes on the test's database."""
    yield from process_starter(lambda *args: ServerProcess(db_path, *args).start())


def scenario(name: str, *, at_us: int | None = None) -> list[str]:
    """A sample_payloads scenario's deliveries as a new call: a CallID of its own, and its
    EventTimes moved to start at `at_us` (now, if None), their spacing kept."""
    text = (ROOT / "sample_payloads" / f"{name}.txt").read_text()
    found = [x for x in text.splitlines() if x and not x.startswith("#")]
    new_ids = {
        old: uuid.uuid4().hex
        for old in re.findall(r"(?:^|&)CallID=([0-9a-f]+)", "\n".join(found), re.M)
    }
    times = [int(t) for line in found for t in re.findall(r"EventTime=(\d+)", line)]
    start = at_us if at_us is not None else time.time_ns() // 1000
    shift = start - min(times) if times else 0
    result = []
    for line in found:
        for old, new in new_ids.items():
            line = line.replace(old, new)
        line = re.sub(r"EventTime=(\d+)", lambda m: f"EventTime={int(m[1]) + shift}", line)
        result.append(line)
    return result
