"""The raw requests as the database keeps them: compressed with a dictionary (zstandard; deflated
in schema versions 12 to 16), and read back exactly, beside rows kept as received (schema
versions before 12, and a server of one)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pbx_emulator.simulate import calls, make_offices, query_string
from receiver.cli import main
from receiver.event import Event, RawRequest, event_json
from receiver.packing import (
    AS_RECEIVED,
    DEFLATED,
    DICTIONARY,
    WINDOW_BITS,
    ZSTD,
    ZSTD_DICTIONARY,
    deflate,
    pack,
    unpack,
)
from receiver.parse import parse_request
from receiver.store import EventQuery, Store
from receiver.store.schema import insert_events
from tests.conftest import SAMPLES, deflated_row, insert_as_before_packing, stored_by_version

# A delivery made with the first dictionary by the first receiver that packed: whatever zlib a
# later build has, and whatever a later receiver packs with, a row like it must read the same.
FIRST_QUERY = (
    b"myid=80901&EventType=dial-in&EventTime=1764572400000000&CallStatus=CALLING&CallID=5d9dc9f8"
    b"1818e811892f902bd23f0824&CallAPIID=3584709739-5d9dc9f8-1818-e811-892f-902bd23f0824&SubCa"
    b"llID=80901-81e74ef5e8e25d940ed904759531985d&CallFlow=in&CalledDID=74958122250&CalledNumb"
    b"er=2009%2A102&CalledExtension=2009%2A102%40sipproxy.telphin.ru&CallerIDName=%D0%90%D0%BD"
    b"%D0%BD%D0%B0&CallerIDNum=%2B79035550101"
)
FIRST_PACKED = bytes.fromhex(
    "8d95510ec23008864fd4e4878285774fa2a5f73f823473733a676c93be90af217cd02e82e1f9e4ff14dc2e92"
    "bf83e0b9ce2a988968f77ef761943b8cc89c87836f9deb80b17c57b852656265726582e58ddc75cbccb81845"
    "93181a169c1708a23ba4a96ba56cc77e70fe126c5947567c0806fc4cf016fa7b8697d9baee4e1c95a2aa2a08"
    "f400"
)
# The same delivery as the first receiver packing with zstandard packed it.
FIRST_ZSTD_PACKED = bytes.fromhex(
    "608900c503006307106767bb9b36877d1c3607fe22e2f959ffcbfd6db53fc8f4cf2272b40969a3f33a7bab84"
    "ef75e7a8fcfc4ad12d259e82f609dfef1cf9f9797a73feac9962aff25b16fc82e15ca0ab4dff08121dafa937"
    "cd79aa07ac64a06c239eae1b651ef7e8589f66a5a3f88c28c38a21b7b827ad19cbda3d6c9357"
)
# The zstandard dictionary, which must never change: rows packed with it need it to be read.
ZSTD_DICTIONARY_SHA256 = "ed260aeda8ae65ff4924e5a2ea3a93168f4af14f46c66b101363c9bce2a1e101"


def emulated_deliveries(offices: int, seed: int, count: int) -> list[bytes]:
    """The query strings of `count` deliveries made by the emulator, as stored (myid first)."""
    out: list[bytes] = []
    for call in calls(make_offices(offices, seed), seed=seed, start_us=1_700_000_000_000_000):
        out += [f"myid={myid}&{query_string(fields)}".encode() for myid, fields in call.events]
        if len(out) >= count:
            return out[:count]
    return out


def test_the_dictionary_is_made_from_the_samples_as_its_comment_says() -> None:
    samples = sorted(SAMPLES.glob("*.txt"))
    made = b"".join(b"myid=85219&" + path.read_bytes().strip() + b"&" for path in samples)
    assert made[-(2**WINDOW_BITS) :] == DICTIONARY


def test_the_zstandard_dictionary_is_the_one_trained_on_emulated_deliveries() -> None:
    """How it was made; the training is not promised to give the same bytes in every release of
    zstandard, so its hash is what is checked."""
    assert hashlib.sha256(ZSTD_DICTIONARY.as_bytes()).hexdigest() == ZSTD_DICTIONARY_SHA256
    if zstandard.ZSTD_VERSION == (1, 5, 7):  # the release it was trained with
        trained = zstandard.train_dictionary(2048, emulated_deliveries(12, 101, 20_000))
        assert trained.as_bytes() == ZSTD_DICTIONARY.as_bytes()


def test_rows_packed_by_the_first_packing_receivers_still_read() -> None:
    assert unpack(FIRST_PACKED, DEFLATED) == FIRST_QUERY
    assert unpack(FIRST_ZSTD_PACKED, ZSTD) == FIRST_QUERY


def test_a_delivery_takes_about_a_quarter_of_its_size() -> None:
    assert len(pack(FIRST_QUERY)) < len(FIRST_QUERY) * 0.35
    real = [path.read_bytes().strip() for path in sorted(SAMPLES.glob("*.txt"))]
    other = emulated_deliveries(40, 7, 2000)  # offices and calls the dictionary never saw
    for deliveries in (real, other):
        packed = sum(len(pack(query)) for query in deliveries)
        assert packed < sum(map(len, deliveries)) * 0.3


@given(st.binary(max_size=5000))
def test_any_bytes_unpack_to_what_was_packed(data: bytes) -> None:
    assert unpack(pack(data), ZSTD) == data
    assert unpack(deflate(data), DEFLATED) == data
    assert unpack(data, AS_RECEIVED) == data


def test_an_unknown_packing_or_a_damaged_one_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="raw_packing 7 is not known to this receiver"):
        unpack(FIRST_PACKED, 7)
    with pytest.raises(ValueError, match="does not inflate"):
        unpack(FIRST_PACKED[:-5], DEFLATED)
    with pytest.raises(ValueError, match="does not inflate"):
        unpack(FIRST_PACKED + b"more", DEFLATED)
    with pytest.raises(ValueError, match="does not unpack"):
        unpack(FIRST_ZSTD_PACKED[:-5], ZSTD)
    with pytest.raises(ValueError, match="does not inflate"):
        unpack(b"\xff\xff\xff\xff", DEFLATED)  # not even the start of a deflate stream
    with pytest.raises(TypeError, match="is int, not bytes"):
        unpack(12345, AS_RECEIVED)  # type: ignore[arg-type]  # as a damaged file may hold


@given(st.binary(min_size=1, max_size=64))
def test_any_stored_bytes_unpack_or_are_refused(data: bytes) -> None:
    for packing in (ZSTD, DEFLATED):
        with contextlib.suppress(ValueError):  # refused as damaged: any other error fails
            assert isinstance(unpack(data, packing), bytes)


def delivery(query: str, received: int, body: bytes = b"", method: str = "GET") -> Event:
    raw = RawRequest(method, query.encode(), body, "application/x-www-form-urlencoded")
    return parse_request(raw, received_at_us=received, source="t")[0]


def deliveries(first: int) -> list[Event]:
    """Deliveries of every kind of raw request: GET, POST, bytes that are not UTF-8."""
    hangup = (SAMPLES / "outbound-hangup.txt").read_text().strip()
    posted = hangup.replace("CallID=", f"CallID=p{first}").encode()
    cp1251 = f"EventType=answer&EventTime={first + 1}&N=".encode() + b"\xc8\xe2\xff"
    return [
        delivery(f"myid=1&{hangup}".replace("CallID=", f"CallID={first}"), first),
        delivery("myid=2", first + 1, posted, "POST"),
        delivery(f"myid=3&EventType=answer&EventTime={first}&N=%C8%E2", first + 2),
        delivery("myid=3", first + 3, cp1251, "POST"),
    ]


async def exported(store: Store) -> list[dict[str, object]]:
    lines = b"".join([chunk async for chunk in store.iter_event_lines(EventQuery())])
    return [json.loads(line) for line in lines.splitlines()]


def by_id(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(records, key=lambda record: str(record["id"]))


def test_rows_kept_as_received_and_rows_packed_read_the_same_everywhere(db_path: Path) -> None:
    before = deliveries(100)  # stored by a receiver of schema version 11
    stored_by_version(db_path, 11, before)
    beside = deliveries(200)  # then stored by one of version 11 beside this one, upgraded
    deflated = deliveries(250)  # by one of versions 12 to 16 beside it
    now = deliveries(300)  # and by this one

    async def store() -> None:
        async with Store(db_path) as store:
            with sqlite3.connect(db_path) as old:
                for n, event in enumerate(beside, start=len(before) + 1):
                    insert_as_before_packing(old, event, n, event.dedup_key())
                for n, event in enumerate(deflated, start=len(before) + len(beside) + 1):
                    old.execute(insert_events(1), deflated_row(event, n, event.dedup_key()))
            for event in now:
                assert not (await store.add_event(event)).duplicate
            assert (await store.add_event(before[0])).duplicate
            assert (await store.add_event(beside[1])).duplicate
            assert (await store.add_event(deflated[2])).duplicate

    asyncio.run(store())
    stored = [*before, *beside, *deflated, *now]
    events = [dataclasses.replace(e, id=n) for n, e in enumerate(stored, 1)]
    for repeated in (0, 4 + 1, 8 + 2):
        events[repeated] = dataclasses.replace(events[repeated], duplicates=1)
    with sqlite3.connect(db_path) as check:
        kept = check.execute("SELECT raw_packing, length(raw_query) FROM events ORDER BY id")
        packings, sizes = zip(*kept, strict=True)
    assert packings == (AS_RECEIVED,) * 8 + (DEFLATED,) * 4 + (ZSTD,) * 4
    assert max(sizes[8], sizes[12]) < sizes[0] * 0.5  # the hangup: deflated, zstd, as received
    expected = by_id([event_json(e, with_raw=True) for e in events])

    async def read() -> None:
        async with Store(db_path) as alone:
            assert by_id(await exported(alone)) == expected
            assert [await alone.get_event_record(e.id or 0) for e in events] == [
                event_json(e, with_raw=True) for e in events
            ]
            assert [await alone.get_event(e.id or 0) for e in events] == events
            page = await alone.list_event_records(EventQuery(), limit=100)
            assert by_id(page.items) == by_id([event_json(e) for e in events])
        async with Store(db_path, own_process=True) as server:  # the export's worker processes
            assert by_id(await exported(server)) == expected

    asyncio.run(read())
    result = CliRunner().invoke(main, ["events", "--db", str(db_path), "--format", "ndjson"])
    assert result.exit_code == 0, result.output
    assert by_id([json.loads(line) for line in result.output.splitlines()]) == expected
    result = CliRunner().invoke(main, ["rebuild", "--reparse", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "16 events again" in result.output and ": 0 changed, 0 merged" in result.output
    asyncio.run(read())


def test_a_replay_stores_each_raw_request_packed(tmp_path: Path) -> None:
    log = tmp_path / "deliveries.txt"
    log.write_text("myid=5&" + (SAMPLES / "queue-agent-dial-in.txt").read_text())
    db = tmp_path / "replayed.db"
    result = CliRunner().invoke(main, ["replay", "--quiet", "--db", str(db), str(log)])
    assert result.exit_code == 0, result.output

    async def first() -> Event | None:
        async with Store(db) as store:
            return await store.get_event(1)

    event = asyncio.run(first())
    assert event is not None and event.raw.query == log.read_bytes().strip()
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT raw_packing FROM events").fetchall() == [(ZSTD,)]
