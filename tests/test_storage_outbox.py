"""The outbox, on every storage backend (the `storage` fixture): messages written with the
events and calls that cause them, claimed under a lease, kept in order within a call, their
outcomes recorded, trimmed, retried and replayed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from receiver.event import now_us
from receiver.forward.rules import Route
from receiver.store import Storage
from receiver.store.outbox import DeliveryQuery, Forwarding, Outcome
from tests.test_storage import event, numbered

OpenStorage = Callable[..., Storage]


URL = "http://crm.example.com/hook"
EVENTS_ONLY = Forwarding((Route(URL, types=frozenset({"event.received"})),))


def delivered(ids: list[int]) -> list[Outcome]:
    return [Outcome(i, "delivered", now_us(), 200, None) for i in ids]


async def test_an_event_is_stored_with_its_message(storage: OpenStorage) -> None:
    async with storage(forwarding=EVENTS_ONLY) as store:
        stored = await store.add_event(numbered(1))
        repeat = await store.add_event(numbered(1))
        claimed = await store.forward_step(URL, "a", [], limit=10, lease_seconds=30)
    assert repeat.duplicate
    [message] = claimed  # a repeat causes none
    assert message.message_id == f"msg_event_{stored.id}"
    assert message.type == "event.received"
    assert b'"type":"event.received"' in message.body
    assert f'"id":{stored.id}'.encode() in message.body


async def test_a_claim_is_one_holder_s_until_its_lease_ends(storage: OpenStorage) -> None:
    async with storage(forwarding=EVENTS_ONLY) as store:
        await asyncio.gather(*(store.add_event(numbered(n)) for n in range(20)))
        first, second = await asyncio.gather(
            store.forward_step(URL, "a", [], limit=15, lease_seconds=30),
            store.forward_step(URL, "b", [], limit=15, lease_seconds=30),
        )
        assert len(first) + len(second) == 20
        assert not {d.id for d in first} & {d.id for d in second}
        # b's outcome for a's message is not taken: the lease is a's
        await store.forward_step(URL, "b", delivered([first[0].id]), limit=0, lease_seconds=1)
        page = await store.list_deliveries(DeliveryQuery(status="delivered"))
        assert page.items == []
        await store.forward_step(URL, "a", delivered([first[0].id]), limit=0, lease_seconds=1)
        page = await store.list_deliveries(DeliveryQuery(status="delivered"))
        assert [d["id"] for d in page.items] == [first[0].id]
        assert await store.forward_release("b") == len(second)
        again = await store.forward_step(URL, "c", [], limit=50, lease_seconds=30)
    assert {d.id for d in again} == {d.id for d in second}


async def test_a_call_s_messages_go_one_at_a_time_in_order(storage: OpenStorage) -> None:
    lines = [
        "myid=1&EventType=dial-in&EventTime=1000&CallID=c1&SubCallID=s1",
        "myid=1&EventType=answer&EventTime=2000&CallID=c1&SubCallID=s1",
        "myid=1&EventType=hangup&EventTime=3000&CallID=c1&SubCallID=s1&CallStatus=ANSWER",
    ]
    async with storage(forwarding=EVENTS_ONLY) as store:
        for line in lines:
            await store.add_event(event(line))
        await store.add_event(numbered(9))  # another call's
        order = []
        for _ in range(5):
            claimed = await store.forward_step(URL, "a", [], limit=10, lease_seconds=30)
            assert len({d.id for d in claimed if b'"c1"' in d.body}) <= 1  # one of c1 at once
            order += [d.id for d in claimed]
            failed = [Outcome(d.id, "pending", now_us(), 500, "HTTP 500", now_us())
                      for d in claimed if d.attempts == 0 and d is claimed[0]]  # fmt: skip
            others = [d.id for d in claimed if d.attempts or d is not claimed[0]]
            await store.forward_step(URL, "a", failed + delivered(others), limit=0,
                                     lease_seconds=30)  # fmt: skip
    c1 = [i for i in order if i <= 3]
    assert sorted(set(c1)) == [1, 2, 3] and c1 == sorted(c1)  # retried, but in order


async def test_dead_ones_are_retried_and_a_410_disables_until_then(storage: OpenStorage) -> None:
    async with storage(forwarding=EVENTS_ONLY) as store:
        await store.add_event(numbered(1))
        [message] = await store.forward_step(URL, "a", [], limit=10, lease_seconds=30)
        gone = Outcome(message.id, "dead", now_us(), 410, "HTTP 410", now_us(), disable="410")
        assert await store.forward_step(URL, "a", [gone], limit=10, lease_seconds=30) == []
        [counts] = await store.forward_counts()
        assert (counts["dead"], counts["disabled_why"]) == (1, "410")
        await store.add_event(numbered(2))  # no message: the destination is disabled
        assert await store.retry_deliveries() == 1
        [again] = await store.forward_step(URL, "a", [], limit=10, lease_seconds=30)
    assert again.message_id == message.message_id


async def test_a_full_outbox_drops_the_delivered_first(storage: OpenStorage) -> None:
    async with storage(forwarding=EVENTS_ONLY) as store:
        await asyncio.gather(*(store.add_event(numbered(n)) for n in range(10)))
        claimed = await store.forward_step(URL, "a", [], limit=4, lease_seconds=30)
        await store.forward_step(URL, "a", delivered([d.id for d in claimed]), limit=0,
                                 lease_seconds=30)  # fmt: skip
        trimmed = await store.forward_trim(7)
        assert (trimmed.delivered, trimmed.dead, trimmed.pending) == (3, 0, 0)
        trimmed = await store.forward_trim(4)
        assert (trimmed.delivered, trimmed.pending) == (1, 2)
        [counts] = await store.forward_counts()
        assert counts["pending"] == 4


async def test_a_replay_writes_a_period_s_events_again(storage: OpenStorage) -> None:
    async with storage(forwarding=EVENTS_ONLY) as store:
        await store.add_event(event("myid=1&EventType=dial-in&CallID=a&SubCallID=a", 1_000))
        await store.add_event(event("myid=1&EventType=dial-in&CallID=b&SubCallID=b", 5_000))
        claimed = await store.forward_step(URL, "a", [], limit=10, lease_seconds=30)
        await store.forward_step(URL, "a", delivered([d.id for d in claimed]), limit=0,
                                 lease_seconds=30)  # fmt: skip
        assert await store.replay_deliveries(2_000, 10_000) == 1
        [again] = await store.forward_step(URL, "a", [], limit=10, lease_seconds=30)
    assert b'"call_id":"b"' in again.body


async def test_a_command_s_events_get_their_messages_as_a_server_s(storage: OpenStorage) -> None:
    """`receiver replay` stores in bulk (on SQLite its rows made before the writer process gets
    them) into a database whose destinations a server set: each event gets its messages all
    the same, each destination's own."""
    original = Route(URL, types=frozenset({"event.received"}), original=True)
    elsewhere = Route("http://other.example.com/hook", myids=frozenset({"nobody"}))
    async with storage(forwarding=Forwarding((original, elsewhere))):
        pass  # the server's destinations become the database's
    async with storage(bulk=True) as command:
        stored = await command.add_event(numbered(1))
        [message] = await command.forward_step(URL, "a", [], limit=10, lease_seconds=30)
        assert await command.forward_step(elsewhere.url, "a", [], limit=9, lease_seconds=30) == []
    assert message.message_id == f"msg_event_{stored.id}"
    assert message.body == numbered(1).raw.query  # the PBX's own form, from the stored row
