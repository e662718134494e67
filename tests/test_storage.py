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
from receiver.store import EventQuery, Storage
from tests.conftest import sample

OpenStorage = Callable[..., Storage]


def event(query: str, received: int = 1) -> Event:
    parsed, _ = parse_request(
        RawRequest("GET", query.encode()), received_at_us=received, source="t"
    )
    return parsed


def numbered(n: int) -> Event:
    return event(f"myid=1&EventType=dial-in&EventTime={1000 + n}&CallID=c{n}&SubCallID=s{n}")


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
    assert sorted(r.id for r in results) == list(range(1, 301))
    assert not any(r.duplicate for r in results)
    assert sorted(e.id for e in page.items) == list(range(1, 301))


async def test_repeats_in_one_group_and_across_groups(storage: OpenStorage) -> None:
    async with storage() as store:
        first, second = await asyncio.gather(
            store.add_event(numbered(1)), store.add_event(numbered(1))
        )
        third = await store.add_event(numbered(1))
        assert (first.duplicate, second.duplicate, third.duplicate) == (False, True, True)
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
