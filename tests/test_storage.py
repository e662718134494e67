"""What every storage backend does (receiver/store/backend.py), run on each one through the
`storage` fixture: durable writes, de-duplication, ids, rejects, reads of what was stored.

What only SQLite does (its files, migrations, WAL, writer process) is in tests/test_store.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from receiver.event import Event, RawRequest, Reject
from receiver.parse import parse_request
from receiver.store import EventQuery, Storage, open_storage
from tests.conftest import sample

OpenStorage = Callable[..., Storage]


def event(query: str, received: int = 1) -> Event:
    parsed, _ = parse_request(
        RawRequest("GET", query.encode()), received_at_us=received, source="t"
    )
    return parsed


def numbered(n: int) -> Event:
    return event(f"myid=1&EventType=dial-in&EventTime={1000 + n}&CallID=c{n}&SubCallID=s{n}")


async def test_a_bulk_store_keeps_and_de_duplicates_every_event_the_same(
    storage: OpenStorage,
) -> None:
    """In bulk (a command storing many: `receiver replay`), on SQLite each row is made before
    the writer process gets it; what is stored and read back is the same."""
    original = event("myid=175&" + sample("outbound-hangup") + "&Odd=%FF&Transfered=yes", 77)
    async with storage(bulk=True) as store:
        stored = await store.add_event(original)
        again = await store.add_event(original)
        others = await asyncio.gather(*(store.add_event(numbered(n)) for n in range(5)))
        back = await store.get_event(stored.id)
    assert again.duplicate and again.id == stored.id
    assert back == dataclasses.replace(original, id=stored.id, duplicates=1)
    assert sorted(o.id for o in others) == list(range(stored.id + 1, stored.id + 6))


async def test_round_trip_keeps_every_field(storage: OpenStorage) -> None:
    original = event("myid=175&" + sample("outbound-hangup") + "&Odd=%FF&Transfered=yes", 77)
    async with storage() as store:
        stored = await store.add_event(original)
        back = await store.get_event(stored.id)
    assert back == dataclasses.replace(original, id=stored.id)
    assert back is not None and back.flags == ("cp1251",)


async def test_concurrent_events_each_get_an_id_once(storage: OpenStorage) -> None:
    async with storage() as store:
        results = await asyncio.gather(*(store.add_event(numbered(n)) for n in range(300)))
        page = await store.list_events(limit=1000)
        counted = (await store.sizes()).events  # kept as they are stored, not counted now
    assert sorted(r.id for r in results) == list(range(1, 301))
    assert counted == 300
    assert not any(r.duplicate for r in results)
    assert sorted(e.id for e in page.items) == list(range(1, 301))


async def test_repeats_in_one_group_and_across_groups(storage: OpenStorage) -> None:
    async with storage() as store:
        first, second = await asyncio.gather(
            store.add_event(numbered(1)), store.add_event(numbered(1))
        )
        third = await store.add_event(numbered(1))
        assert (first.duplicate, second.duplicate, third.duplicate) == (False, True, True)
        assert (await store.sizes()).events == 1  # repeats are no new events
        assert first.id == second.id == third.id
        stored = await store.get_event(first.id)
    assert stored is not None and stored.duplicates == 2


async def test_ids_continue_after_reopening(storage: OpenStorage) -> None:
    async with storage() as store:
        await store.add_event(numbered(1))
    async with storage() as store:
        assert (await store.add_event(numbered(2))).id == 2
        assert (await store.add_event(numbered(1))).duplicate is True


async def test_writes_after_close_are_refused(storage: OpenStorage) -> None:
    async with storage() as store:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await store.add_event(numbered(1))


async def test_rejects_are_kept_newest_first(storage: OpenStorage) -> None:
    async with storage(rejects_max=2) as store:
        for n in range(3):
            await store.add_reject(Reject(n, 400, "why", RawRequest("GET", f"n={n}".encode())))
        page = await store.list_rejects(limit=1)
        older = await store.list_rejects(limit=5, before=int(page.next or 0))
    assert [r.raw.query for r in page.items] == [b"n=2"]
    assert [r.raw.query for r in older.items] == [b"n=1"]


async def test_a_missing_call_id_and_the_text_none_are_two_events(storage: OpenStorage) -> None:
    async with storage() as store:
        missing = await store.add_event(event("myid=1&EventType=answer&EventTime=5"))
        text = await store.add_event(event("myid=1&EventType=answer&EventTime=5&CallID=None"))
        assert (missing.duplicate, text.duplicate) == (False, False)
        assert text.id != missing.id


async def test_every_output_of_an_event_agrees(storage: OpenStorage) -> None:
    async with storage() as store:
        for n in range(5):
            await store.add_event(numbered(n))
        records = (await store.list_event_records(EventQuery(), limit=10)).items
        lines = b"".join([chunk async for chunk in store.iter_event_lines(EventQuery())])
        streamed = [record async for record in store.iter_event_records(EventQuery())]
        one = await store.get_event_record(records[2]["id"])
    assert streamed == records and len(records) == 5
    assert lines.count(b"\n") == 5
    assert one is not None and {k: v for k, v in one.items() if k != "raw"} == records[2]


async def test_calls_are_built_then_read(storage: OpenStorage) -> None:
    from receiver.store import CallQuery

    lines = [sample(n) for n in ("outbound-dial-out", "outbound-answer", "outbound-hangup")]
    async with storage() as store:
        for line in lines:
            await store.add_event(event(f"myid=85219&{line}"))
        before = await store.calls_state()
        await store.refresh_calls()
        after = await store.calls_state()
        page = await store.list_calls(CallQuery(now_us=2**62), limit=10)
    assert before.built_to_event == 0 and after.built_to_event == 3 and after.current
    assert [call["status"] for call in page.items] == ["answered"]


def timed(n: int, at_us: int, call: str | None = None, kind: str = "hangup") -> Event:
    """An event of call `call` (default c<n>) at `at_us` (its EventTime)."""
    call_id = call or f"c{n}"
    return event(f"myid={n % 3}&EventType={kind}&EventTime={at_us}&CallID={call_id}&SubCallID=s{n}")


DAY_US = 86_400_000_000
NOW_US = 1_800_000_000_000_000


async def test_prune_takes_whole_calls_and_never_gives_an_id_again(storage: OpenStorage) -> None:
    old = [timed(n, NOW_US - 500 * DAY_US + n) for n in range(1200)]  # more than one batch
    spanning = [timed(5000, NOW_US - 500 * DAY_US, "both"), timed(5001, NOW_US, "both")]
    recent = [timed(n, NOW_US - DAY_US + n) for n in range(2000, 2010)]
    async with storage() as store:
        await asyncio.gather(*(store.add_event(e) for e in [*old, *spanning, *recent]))
        await store.refresh_calls()
        assert await store.count_calls() == 1200 + 1 + 10
        before_us = NOW_US - 400 * DAY_US
        dry = await store.prune(before_us, dry_run=True)
        assert (dry.events, dry.calls, dry.kept_events) == (1200, 1200, 1)
        assert (await store.sizes()).events == 1212  # a dry run deletes nothing
        steps: list[int] = []
        done = await store.prune(before_us, progress=lambda so_far: steps.append(so_far.events))
        assert (done.events, done.calls, done.kept_events) == (1200, 1200, 1)
        assert len(steps) >= 3 and steps[-1] == 1200  # in batches
        left = await store.list_events(limit=100)
        assert {e.call_id for e in left.items} == {"both", *(f"c{n}" for n in range(2000, 2010))}
        assert await store.count_calls() == 11
        both = await store.get_call("both", now_us=NOW_US)
        assert both is not None and len(both.events) == 2  # the old half of a new call stays
        newest = max(e.id for e in left.items)
        late = event("myid=1&EventType=hangup&EventTime=5&CallID=late", NOW_US)  # clock wrong
        await store.add_event(late)
        assert (await store.prune(NOW_US - DAY_US)).events == 0  # received lately: it stays
        await store.prune(NOW_US + DAY_US)  # everything, the newest id included
        assert (await store.sizes()).events == 0
        newest += 1  # the late one
        again = await store.add_event(timed(9000, NOW_US))
        assert again.id > newest  # an id answered once is never given to another event


async def test_prune_keeping_the_calls(storage: OpenStorage) -> None:
    async with storage() as store:
        await asyncio.gather(*(store.add_event(timed(n, NOW_US - 500 * DAY_US)) for n in range(20)))
        await store.refresh_calls()
        dry = await store.prune(NOW_US, keep_calls=True, dry_run=True)
        assert (dry.events, dry.calls) == (20, 0)
        done = await store.prune(NOW_US, keep_calls=True)
        assert (done.events, done.calls) == (20, 0)
        assert (await store.sizes()).events == 0
        assert await store.count_calls() == 20


async def test_newest_event_of_each_myid_and_sizes(storage: OpenStorage) -> None:
    async with storage() as store:
        assert await store.newest_events() == {}
        for n, at in enumerate([NOW_US - 5, NOW_US - 9, NOW_US - 1, NOW_US - 7]):
            await store.add_event(timed(n, at))  # myids 0, 1, 2, 0
        assert await store.newest_events() == {"0": NOW_US - 5, "1": NOW_US - 9, "2": NOW_US - 1}
        sizes = await store.sizes()
        assert sizes.events == 4 and sizes.database_bytes > 0
        assert store.writer_state().alive and store.writer_state().queued == 0
        await store.check_writable()


async def simulated(store: Storage, *, start_us: int, count: int) -> None:
    """`count` simulated calls (pbx_emulator.simulate), one every 20-40 s from `start_us`; every
    seventh without its last event (still in progress, or its end unknown)."""
    from pbx_emulator.simulate import calls, make_offices, query_string

    events = []
    made = calls(make_offices(3, 5), seed=5, start_us=start_us, every_us=(20_000_000, 40_000_000))
    for index, call in zip(range(count), made, strict=False):
        for myid, fields in call.events[: -1 if index % 7 == 0 else None]:
            raw = RawRequest("GET", f"myid={myid}&{query_string(fields)}".encode())
            parsed, _ = parse_request(raw, received_at_us=int(fields["EventTime"]), source="t")
            events.append(parsed)
    await asyncio.gather(*store.submit_events(events))
    await store.refresh_calls()


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Kolkata", "UTC"])
async def test_calls_by_hour_agree_with_the_calls(storage: OpenStorage, zone: str) -> None:
    """Over the night Berlin's clock goes back (26 October 2025, 01:00 UTC: its 02:00 hour
    comes twice, one bucket) and in a zone half an hour off UTC's hours."""
    from collections import Counter
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from receiver.store import CallQuery
    from receiver.zones import DAY_US, day_start

    place = ZoneInfo(zone)
    start = 1_761_431_400_000_000  # 2025-10-25T22:30:00Z
    async with storage() as store:
        await simulated(store, start_us=start, count=400)
        now = start + 2 * 3_600_000_000  # some calls still in progress, some unknown_end
        since = day_start(place, start + 3_600_000_000)
        query = CallQuery(since_us=since, until_us=since + DAY_US + 3_600_000_000,
                          now_us=now, unknown_after_us=600_000_000)  # fmt: skip
        periods = await store.calls_by_period(query, by="hour", place=place)
        listed = [call async for call in store.iter_calls(query)]

    def wall(moment: datetime) -> str:
        return moment.astimezone(place).strftime("%m-%d %H")

    expected = Counter((wall(datetime.fromisoformat(c["started_at"])), c["status"]) for c in listed)
    found = Counter()
    for row in periods:
        found[(wall(datetime.fromtimestamp(row["period_us"] / 1e6, place)), row["status"])] += row[
            "calls"
        ]
    assert found == expected and sum(expected.values()) > 100
    assert {s for _, s in expected} >= {"answered", "missed", "in_progress", "unknown_end"}


async def test_waiting_numbers_are_the_missed_reports_unhandled(storage: OpenStorage) -> None:
    from receiver.store import CallQuery
    from tests.conftest import scenario

    start = 1_764_547_200_000_000
    minute = 60_000_000
    # Besides: a number missed twice then called again and answered (handled), another missed
    # twice and still waiting, the second time after the first hour.
    answered = scenario("inbound-answered", at_us=start + 30 * minute)
    other = [scenario("inbound-cancelled", at_us=start + at * minute) for at in (40, 70)]
    lines = [
        *scenario("inbound-cancelled", at_us=start + 10 * minute),
        *scenario("inbound-cancelled", at_us=start + 20 * minute),
        *(line.replace("4951234567", "4957654321") for line in answered),
        *(line.replace("4957654321", "4950000001") for call in other for line in call),
    ]
    async with storage() as store:
        await simulated(store, start_us=start, count=600)
        for line in lines:
            await store.add_event(event(f"myid=1&{line}"))
        await store.refresh_calls()
        for since in (start, start + 3_600_000_000):
            query = CallQuery(since_us=since, until_us=start + 86_400_000_000,
                              now_us=start + 86_400_000_000)  # fmt: skip
            report = await store.missed_report(query)
            waiting = [row for row in report if not row["handled"]]
            for limit in (1, 15, 1000):
                shown, count = await store.waiting_numbers(query, limit=limit)
                assert (shown, count) == (waiting[:limit], len(waiting))
        assert len(waiting) > 15
        everything = await store.missed_report(CallQuery(since_us=start, now_us=start))
    numbers = {row["number"]: (row["missed"], row["handled"]) for row in everything}
    assert numbers["+74957654321"] == (2, True) and numbers["+74950000001"] == (2, False)


def test_the_postgresql_storage_is_a_postgresql_database(postgresql_db: str) -> None:
    """Each test's database is a URL the receiver opens on PostgreSQL, never a string it would
    take for the name of an SQLite file."""
    from receiver.store.postgresql import PostgresStore

    assert postgresql_db.startswith("postgresql://")
    assert isinstance(open_storage(postgresql_db), PostgresStore)
