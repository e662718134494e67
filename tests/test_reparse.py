"""Stored events parsed again (`receiver rebuild --reparse`) on real SQLite files: what an older
parser stored is made right, repeats it missed are merged, a raw request refused now stays."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.event import Event, RawRequest
from receiver.parse import parse_request
from receiver.store import SCHEMA_VERSION, Store
from receiver.store.schema import EVENT_COLUMNS, event_from_row, event_row, insert_events
from tests.conftest import stored_by_version

T = 1764572400000000  # 2025-12-01T07:00:00Z, in µs
# Deliveries as the PBX sends them, to one URL without myid (replay --myid 7 gives it).
DELIVERIES = [
    # 1: a raw '+' in CallerIDNum, which decodes to a space (pbx-events §1)
    f"EventType=dial-in&EventTime={T}&CallID=c1&SubCallID=s1&CallFlow=in"
    "&CallerIDNum=+79161112233&CalledExtension=101",
    # 2
    f"EventType=answer&EventTime={T + 5_000_000}&CallID=c1&SubCallID=s1&CallFlow=in"
    "&CallerIDNum=%2B79161112233&CalledExtension=101&CallStatus=ANSWER",
    # 3: Bridged, which an older parser left in extra
    f"EventType=hangup&EventTime={T + 50_000_000}&CallID=c1&SubCallID=s1&CallFlow=in"
    "&CallerIDNum=%2B79161112233&CalledExtension=101&CallStatus=ANSWER&Duration=45000000"
    "&Bridged=yes",
    # 4: CallID sent twice; the later value wins (an older parser took the first)
    f"EventType=dial-out&EventTime={T + 60_000_000}&CallID=old&CallID=c3&SubCallID=s3"
    "&CallFlow=out&CalledNumber=%2B74951234567&CallerExtension=102",
    # 5: stored as it is now: the re-parse leaves it alone
    f"EventType=hangup&EventTime={T + 70_000_000}&CallID=c3&SubCallID=s3&CallFlow=out"
    "&CalledNumber=%2B74951234567&CallerExtension=102&CallStatus=NOANSWER&Duration=0",
]


def parsed(query: str, myid: str | None = "7") -> Event:
    """A delivery as the current parser makes it (received at T, as replay's time)."""
    event, _ = parse_request(
        RawRequest("GET", query.encode()), received_at_us=T, source="t", default_myid=myid
    )
    return event


def stored(db: Path, event_id: int) -> Event | None:
    with sqlite3.connect(db) as connection:
        row = connection.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)
        ).fetchone()
    return None if row is None else event_from_row(row)


def store_as(db: Path, event_id: int, event: Event) -> None:
    """Put `event` in the events table as event `event_id`, keyed as it would be keyed: what a
    release with another parser would have stored."""
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM events WHERE id = ?", (event_id,))
        connection.execute(insert_events(1), event_row(event, event_id, event.dedup_key()))


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def reparse(db: Path) -> tuple[dict[str, int], str]:
    """Run `receiver rebuild --reparse`; its counts, and the calls line."""
    out = run("rebuild", "--reparse", "--db", str(db))
    first, calls = out.splitlines()
    found = re.fullmatch(
        r"parsed (\d+) events again in [\d.]+ s: (\d+) changed, (\d+) merged as repeats, "
        r"(\d+) refused by this parser \(kept as stored\)",
        first,
    )
    assert found, out
    read, changed, merged, refused = map(int, found.groups())
    return {"read": read, "changed": changed, "merged": merged, "refused": refused}, calls


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A database stored by this receiver, then changed by hand to what an older parser would
    have stored, and the calls built from that."""
    db = tmp_path / "old.db"
    (tmp_path / "deliveries.txt").write_text("\n".join(DELIVERIES) + "\n")
    run("replay", "-q", "--db", str(db), "--myid", "7", str(tmp_path / "deliveries.txt"))
    now = {event_id: stored(db, event_id) for event_id in range(1, 6)}
    assert all(now.values())
    one, three, four = now[1], now[3], now[4]
    assert one is not None and three is not None and four is not None
    assert (one.caller_id_num, one.flags) == ("+79161112233", ("plus_restored",))
    # No '+' put back, and no flag saying so.
    store_as(db, 1, dataclasses.replace(one, caller_id_num=" 79161112233", flags=()))
    # Bridged not known: left in extra.
    store_as(db, 3, dataclasses.replace(three, bridged=None, extra={"Bridged": "yes"}))
    # The first CallID taken: another call, and another de-dup key.
    store_as(db, 4, dataclasses.replace(four, call_id="old", flags=(), extra={}))
    # Two deliveries of one event that an older parser, which took only `CallID` spelled so,
    # stored as two: first the one spelled otherwise (6 and 7), then the other way round (8
    # and 9). The same event by the current parser, so the lower id stays, with all the repeats.
    for event_id, query, repeats in [
        (6, f"EventType=dial-in&EventTime={T + 80_000_000}&callid=c6&SubCallID=s6", 0),
        (7, f"EventType=dial-in&EventTime={T + 80_000_000}&CallID=c6&SubCallID=s6", 1),
        (8, f"EventType=dial-in&EventTime={T + 90_000_000}&CallID=c8&SubCallID=s8", 0),
        (9, f"EventType=dial-in&EventTime={T + 90_000_000}&callid=c8&SubCallID=s8", 2),
    ]:
        event = dataclasses.replace(parsed(query), duplicates=repeats)
        if "callid=" in query:
            event = dataclasses.replace(event, call_id=None, extra={"callid": event.call_id})
        store_as(db, event_id, event)
    # Two different myids in one URL, which an older parser took the last of; refused now.
    query = f"myid=1&myid=2&EventType=hangup&EventTime={T + 99_000_000}&CallID=c10&SubCallID=s10"
    refused = parsed(query.replace("myid=1&", ""))
    store_as(db, 10, dataclasses.replace(refused, raw=RawRequest("GET", query.encode())))
    run("rebuild", "--db", str(db))  # the calls, as the older release built them
    return db


def call(db: Path, call_id: str) -> dict[str, Any] | None:
    result = CliRunner().invoke(main, ["calls", "--db", str(db), "--format", "json"])
    calls = {c["call_id"]: c for c in json.loads(result.stdout)}
    return calls.get(call_id)


def test_reparse_makes_events_what_the_current_parser_makes_of_them(old_db: Path) -> None:
    before = {event_id: stored(old_db, event_id) for event_id in range(1, 11)}
    assert call(old_db, "old") is not None and call(old_db, "c3") is not None
    counts, calls = reparse(old_db)
    # 1, 3, 4 and 6 written again, 7 and 9 merged (into 6 and 8), 10 refused: of 10 events.
    assert counts == {"read": 10, "changed": 4, "merged": 2, "refused": 1}
    assert not calls.endswith(": 0 changed")  # calls 'c1' and 'c3' came out otherwise
    for event_id, query in enumerate(DELIVERIES, start=1):  # as a replay stores them now
        now, was = stored(old_db, event_id), before[event_id]
        assert now is not None and was is not None
        assert (now.source, now.received_at_us) == ("replay:query-lines", was.received_at_us)
        kept = {"id": event_id, "source": now.source, "received_at_us": now.received_at_us}
        assert now == dataclasses.replace(parsed(query), **kept), event_id
    one = stored(old_db, 1)
    assert one is not None and (one.caller_id_num, one.flags) == (
        "+79161112233",
        ("plus_restored",),
    )
    three = stored(old_db, 3)
    assert three is not None and (three.bridged, three.extra) == (True, {})
    # The lower id stays, with the other's repeats and the other itself counted as repeats.
    six, eight = stored(old_db, 6), stored(old_db, 8)
    assert six is not None and (six.call_id, six.duplicates, six.extra) == ("c6", 2, {})
    assert six.raw.query.endswith(b"&callid=c6&SubCallID=s6")  # its own raw request stays
    assert eight is not None and (eight.call_id, eight.duplicates) == ("c8", 3)
    assert (stored(old_db, 7), stored(old_db, 9)) == (None, None)
    assert stored(old_db, 10) == before[10]  # refused now: kept exactly as stored
    # The call the wrong CallID made is gone; the calls are built from the events as they are.
    assert call(old_db, "old") is None
    c1 = call(old_db, "c1")
    assert c1 is not None and c1["external_number"] == "+79161112233"


def test_a_second_reparse_changes_nothing(old_db: Path) -> None:
    reparse(old_db)
    counts, calls = reparse(old_db)
    assert counts == {"read": 8, "changed": 0, "merged": 0, "refused": 1}
    assert calls.endswith(": 0 changed")


async def test_a_repeat_of_a_re_parsed_event_is_found_by_its_new_key(old_db: Path) -> None:
    async with Store(old_db) as store:
        assert (await store.reparse_events()).merged == 2
        repeat = parsed(f"EventType=dial-in&EventTime={T + 80_000_000}&CallID=c6&SubCallID=s6")
        assert (await store.add_event(repeat)).id == 6
        moved = parsed(DELIVERIES[3])  # its key changed with its CallID
        assert (await store.add_event(moved)).id == 4
    six = stored(old_db, 6)
    assert six is not None and six.duplicates == 3


async def test_progress_goes_up_to_the_newest_event_batch_by_batch(db_path: Path) -> None:
    events = [parsed(f"EventType=dial-in&EventTime={T + n}&CallID=c{n}") for n in range(1, 1201)]
    stored_by_version(db_path, SCHEMA_VERSION, events)
    seen: list[tuple[int, int]] = []
    async with Store(db_path) as store:
        counts = await store.reparse_events(lambda done, up_to: seen.append((done, up_to)))
    assert (counts.read, counts.changed) == (1200, 0)
    assert seen == [(500, 1200), (1000, 1200), (1200, 1200)]


async def test_an_event_whose_new_key_is_held_by_a_refused_one_is_kept_as_stored(
    db_path: Path,
) -> None:
    identity = f"EventType=dial-in&EventTime={T}&SubCallID=s1"
    # Refused now (two myids), stored as the event it is keyed by.
    refused = dataclasses.replace(
        parsed(f"{identity}&CallID=c1"),
        raw=RawRequest("GET", f"myid=1&myid=7&{identity}&CallID=c1".encode()),
    )
    # By the current parser the same event as the refused one, which holds its key.
    stale = parsed(f"{identity}&callid=c1")
    stale = dataclasses.replace(stale, call_id=None, extra={"callid": "c1"})
    stored_by_version(db_path, SCHEMA_VERSION, [refused, stale])
    async with Store(db_path) as store:
        counts = await store.reparse_events()
    assert (counts.read, counts.changed, counts.merged, counts.refused, counts.held) == (
        2, 0, 0, 1, 1,
    )  # fmt: skip
    assert stored(db_path, 2) == dataclasses.replace(stale, id=2)
    assert stored(db_path, 1) == dataclasses.replace(refused, id=1)


def test_the_id_of_an_event_merged_away_is_never_given_again(db_path: Path) -> None:
    # The highest id merged into a lower one: the next event must not get it back, since the
    # PBX (or a client) was answered that id for the other event.
    query = "myid=1&EventType=hangup&EventTime=5000&CallID=c1&SubCallID=s1"
    one, _ = parse_request(RawRequest("GET", query.encode()), received_at_us=1, source="t")
    another = dataclasses.replace(one, call_id="c2", sub_call_id="s2")

    async def add(event: Event) -> int:
        async with Store(db_path) as store:
            return (await store.add_event(event)).id

    assert asyncio.run(add(one)) == 1
    with sqlite3.connect(db_path) as old:  # the same event again, as an older parser keyed it
        old.execute(insert_events(1), event_row(one, 2, b"as an older parser keyed it"))
    counts, _ = reparse(db_path)
    assert counts["merged"] == 1
    assert asyncio.run(add(another)) == 3
