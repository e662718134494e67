"""What only the PostgreSQL backend does: several instances on one database (the same events
stored once, ids in commit order, migrations started together, calls built once), and a clear
line for a database that cannot be reached."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psycopg
import pytest

from receiver.event import Event, RawRequest
from receiver.parse import parse_request
from receiver.store import CallQuery, EventQuery, open_storage
from receiver.store.pg_schema import SCHEMA_VERSION, migrate
from receiver.store.postgresql import DatabaseUnavailable, PostgresStore
from tests.conftest import free_port


def event(n: int, kind: str = "dial-in") -> Event:
    query = f"myid=1&EventType={kind}&EventTime={1000 + n}&CallID=c{n % 50}&SubCallID=s{n}"
    parsed, _ = parse_request(RawRequest("GET", query.encode()), received_at_us=1, source="t")
    return parsed


def store(url: str) -> PostgresStore:
    opened = open_storage(url)
    assert isinstance(opened, PostgresStore)
    return opened


async def test_two_instances_store_the_same_events_once_with_ids_in_commit_order(
    postgresql_db: str,
) -> None:
    events = [event(n) for n in range(600)]
    async with store(postgresql_db) as one, store(postgresql_db) as two:
        # Both get every event, at once, in groups of their own.
        first, second = await asyncio.gather(
            asyncio.gather(*(one.add_event(e) for e in events)),
            asyncio.gather(*(two.add_event(e) for e in reversed(events))),
        )
        page = await one.list_events(limit=2000)
    ids = [r.id for r in first]
    assert ids == [r.id for r in reversed(second)]  # the same event, the same id
    assert sorted(ids) == list(range(1, 601))  # each stored once, no id skipped
    assert all(first[n].duplicate != second[599 - n].duplicate for n in range(600))
    assert sorted(e.id for e in page.items) == list(range(1, 601))
    assert all(e.duplicates == 1 for e in page.items)  # the other instance's, counted


async def test_a_reader_paging_by_id_never_misses_a_later_commit(postgresql_db: str) -> None:
    """Ids rise in commit order: whatever a reader has seen up to id N, nothing committed
    after it has an id of N or under."""
    async with store(postgresql_db) as one, store(postgresql_db) as two:
        writes = asyncio.gather(
            *(one.add_event(event(n)) for n in range(0, 800, 2)),
            *(two.add_event(event(n)) for n in range(1, 800, 2)),
        )
        seen: list[int] = []
        while not writes.done() or (seen and seen[-1] < 800):
            after = seen[-1] if seen else 0
            seen += [record["id"] for record in await one.events_after(after, limit=50)]
            if writes.done() and len(seen) == 800:
                break
            await asyncio.sleep(0)
        await writes
    assert seen == list(range(1, 801))


async def test_three_instances_migrating_together(postgresql_databases) -> None:  # type: ignore[no-untyped-def]
    # An empty database (not the migrated template): the three find no tables.
    name = f"receiver_migrate_{free_port()}"
    from tests.conftest import POSTGRESQL_URL, with_dbname

    with psycopg.connect(POSTGRESQL_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = with_dbname(POSTGRESQL_URL, name)
    try:

        async def start() -> int:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
                return await migrate(connection)

        found = await asyncio.gather(start(), start(), start())
        assert 0 in found and set(found) <= {0, SCHEMA_VERSION}  # each saw none, or all
        with psycopg.connect(url) as check:
            rows = check.execute("SELECT version FROM receiver_schema").fetchall()
        assert rows == [(SCHEMA_VERSION,)]
        async with store(url) as opened, store(url) as again:  # and three stores at once
            assert await opened.check() == await again.check() == SCHEMA_VERSION
    finally:
        with psycopg.connect(POSTGRESQL_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_the_events_stored_before_version_4_are_counted_once(postgresql_db: str) -> None:
    async with store(postgresql_db) as opened:
        await asyncio.gather(*(opened.add_event(event(n)) for n in range(7)))
    with psycopg.connect(postgresql_db, autocommit=True) as old:  # as version 3 left it
        old.execute("DROP TABLE event_count")
        old.execute("DROP FUNCTION receiver_count_added, receiver_count_removed CASCADE")
        old.execute("UPDATE receiver_schema SET version = 3")
    async with store(postgresql_db) as opened:
        assert (await opened.sizes()).events == 7
        await opened.add_event(event(7))
        await opened.add_event(event(7))  # a repeat
        assert (await opened.sizes()).events == 8


async def test_two_instances_building_calls_build_each_once(postgresql_db: str) -> None:
    events = [event(n, kind) for n in range(300) for kind in ("dial-in", "hangup")]
    async with store(postgresql_db) as one, store(postgresql_db) as two:
        stored = asyncio.gather(
            *(one.add_event(e) for e in events[::2]), *(two.add_event(e) for e in events[1::2])
        )
        read = 0
        while not stored.done():
            counts = await asyncio.gather(
                one.refresh_calls(background=True), two.refresh_calls(background=True)
            )
            read += sum(counts)
            await asyncio.sleep(0.005)
        await stored
        read += sum(await asyncio.gather(one.refresh_calls(), two.refresh_calls()))
        state = await one.calls_state()
        calls = await one.list_calls(CallQuery(now_us=2**62), limit=1000)
        built = await two.count_calls()
    assert state.current and state.built_to_event == 600
    assert read == 600  # each call event read by one instance, once
    assert built == 50 and len(calls.items) == 50


def test_an_unreachable_database_is_one_line_at_start() -> None:
    url = f"postgresql://receiver:secret@127.0.0.1:{free_port()}/receiver"
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--db", url, "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot use the PostgreSQL database" in lines[0] and "check that the server" in lines[0]
    assert "secret" not in done.stderr  # the password is never shown


async def test_opening_an_unreachable_database_raises_one_clear_error() -> None:
    url = f"postgresql://receiver@127.0.0.1:{free_port()}/receiver"
    with pytest.raises(DatabaseUnavailable, match="check that the server runs"):
        async with store(url):
            pass


async def test_a_nul_in_a_field_is_stored_and_its_call_built(postgresql_db: str) -> None:
    """PostgreSQL's text holds no NUL: a field's is kept as U+FFFD, the raw request as sent."""
    query = b"myid=1&EventType=dial-in&EventTime=5&CallID=a%00b&SubCallID=s&CallerIDName=x%00y"
    sent, _ = parse_request(RawRequest("GET", query), received_at_us=1, source="t")
    async with store(postgresql_db) as opened:
        stored = await opened.add_event(sent)
        again = await opened.add_event(sent)
        back = await opened.get_event(stored.id)
        record = await opened.get_event_record(stored.id)
        await opened.refresh_calls()
        call = await opened.get_call("a\ufffdb", now_us=2**62)
        found = await opened.list_events(EventQuery(call_id="a\x00b"))
    assert again.duplicate and again.id == stored.id
    assert back is not None and back.caller_id_name == "x\ufffdy" and back.raw == sent.raw
    assert record is not None and record["raw"]["query"] == query.decode()
    assert call is not None and len(call.events) == 1
    assert [e.id for e in found.items] == [stored.id]


async def test_two_instances_forwarding_never_claim_the_same_message(postgresql_db: str) -> None:
    """The outbox on one database: each event's message written once (with the event, by
    whichever instance stored it), and claimed by one instance at a time (FOR UPDATE SKIP
    LOCKED), however the two race."""
    from receiver.event import now_us
    from receiver.forward.rules import Route
    from receiver.store.outbox import Forwarding, Outcome

    url = "http://crm.example.com/hook"
    forwarding = Forwarding((Route(url, types=frozenset({"event.received"})),))
    events = [event(n) for n in range(300)]
    one = PostgresStore(postgresql_db, forwarding=forwarding)
    two = PostgresStore(postgresql_db, forwarding=forwarding)
    async with one, two:
        await asyncio.gather(
            asyncio.gather(*(one.add_event(e) for e in events)),
            asyncio.gather(*(two.add_event(e) for e in reversed(events))),
        )
        claimed: dict[str, list[int]] = {"one": [], "two": []}

        async def deliver(instance: PostgresStore, holder: str) -> None:
            outcomes: list[Outcome] = []
            while True:
                got = await instance.forward_step(url, holder, outcomes, limit=7, lease_seconds=30)
                if not got:
                    return
                claimed[holder] += [d.id for d in got]
                outcomes = [Outcome(d.id, "delivered", now_us(), 200, None) for d in got]

        await asyncio.gather(*(deliver(s, h) for s, h in ((one, "one"), (two, "two")) * 2))
        [counts] = await one.forward_counts()
    every = claimed["one"] + claimed["two"]
    assert len(every) == len(set(every)) == 300  # each message once, none twice
    assert claimed["one"] and claimed["two"]  # both took part
    assert counts["pending"] == 0 and counts["dead"] == 0
