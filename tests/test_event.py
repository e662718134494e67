"""An event's values as its JSON record shows them, whatever the database holds."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.event import (
    LAST_TIME_US,
    RECORD_FIELDS,
    RawRequest,
    event_lines,
    event_record,
    iso_time,
    stored_row,
    trusted_record,
)
from receiver.parse import parse_request
from receiver.store.schema import (
    EVENT_COLUMNS,
    event_from_row,
    insert_events,
    migrate,
    tolerant_text,
)
from receiver.stored import OPTIONAL_INTEGERS, STORED_FIELDS
from receiver.web.openapi import EVENT_FIELDS
from tests.conftest import sample


@given(st.integers(min_value=0, max_value=LAST_TIME_US))
def test_a_time_is_shown_to_the_microsecond_as_datetime_shows_it(us: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    assert iso_time(us) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=LAST_TIME_US + 1)))
def test_a_time_outside_the_years_1970_to_9999_is_shown_as_none(us: int) -> None:
    assert iso_time(us) is None


def stored(name: str = "outbound-hangup") -> list[Any]:
    """A real delivery's row as the database keeps it (packed)."""
    raw = RawRequest("GET", f"myid=175&{sample(name)}".encode())
    event, _ = parse_request(raw, received_at_us=1_700_000_000_000_000, source="t")
    return list(stored_row(event, 7, packed=True))


# A value this receiver could not have stored, and the column its record flags.
DAMAGES = [
    ("duration_us", "abc", "duration_us"),
    ("event_time_us", 1.5, "event_time_us"),
    ("received_at_us", 1.5, "received_at_us"),
    ("caller_extension_id", "85219", "caller_extension_id"),
    ("transferred", "yes", "transferred"),
    ("transferred", 2, "transferred"),
    ("bridged", "yes", "bridged"),
    ("duplicates", 1.5, "duplicates"),
    ("extra", "{bad", "extra"),
    ("extra", "[1]", "extra"),
    ("extra", '{"a": NaN}', "extra"),
    ("flags", "[1]", "flags"),
    ("flags", "nope", "flags"),
    ("caller_id_name", b"\xffA", "caller_id_name"),  # read as bytes: text not UTF-8
    ("myid", b"175", "myid"),
    ("raw_query", b"\x00\x11 not a frame", "raw_query"),
    ("raw_query", "text, not bytes", "raw_query"),
    ("raw_packing", 9, "raw_query"),
    ("raw_packing", 1, "raw_query"),  # deflated, says the row: its frame does not inflate
    ("raw_packing", "", "raw_query"),
    ("raw_query", 12345, "raw_query"),
    ("event_time_us", 1e20, "event_time_us"),  # REAL: beyond what an integer column holds
    ("event_time_us", -1.5, "event_time_us"),
    ("received_at_us", float("inf"), "received_at_us"),
]


@pytest.mark.parametrize(("column", "value", "flagged"), DAMAGES)
def test_a_damaged_value_makes_a_record_that_flags_it(
    column: str, value: Any, flagged: str
) -> None:
    row = stored()
    row[STORED_FIELDS.index(column)] = value
    record = event_record(row, with_raw=True)
    assert record["flags"][-1] == f"damaged_value:{flagged}"
    assert record["id"] == 7 and record["call_id"] == stored_record()["call_id"]
    line = event_lines([row])
    assert orjson.loads(line) == record  # the export's fast path falls back to the same record
    assert json.loads(json.dumps(record, allow_nan=False)) == record  # as the JSON pages write it
    assert f"damaged_value:{flagged}" in event_from_row(row).flags


# What SQLite may hand back from each kind of column: text columns turn numbers into text,
# integer columns keep text, blobs and REALs they cannot hold as integers, a BLOB column takes
# anything; NOT NULL columns no NULL. (The id is the rowid, always an integer.)
ANY_VALUE = st.one_of(
    st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(), st.text(),
    st.binary(max_size=64),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([name for name in STORED_FIELDS if name != "id"]), ANY_VALUE)
def test_any_value_sqlite_holds_makes_one_record_in_every_output(column: str, value: Any) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    migrate(db)  # the events table as the receiver makes it, its columns' declared types
    db.execute(insert_events(1), [*stored(), b"key"])
    try:
        db.execute(f"UPDATE events SET {column} = ?", [value])
    except sqlite3.IntegrityError:  # NULL into a NOT NULL column
        return
    db.text_factory = tolerant_text  # as a reader does once text is not UTF-8
    [row] = db.execute(f"SELECT {EVENT_COLUMNS} FROM events").fetchall()
    record = event_record(row, with_raw=True)
    assert orjson.loads(event_lines([row])) == record
    assert json.loads(json.dumps(record, allow_nan=False)) == record
    assert event_record(row) == {k: v for k, v in record.items() if k != "raw"}
    event_from_row(row)


def test_a_damaged_raw_request_shows_what_is_stored() -> None:
    row = stored()
    row[STORED_FIELDS.index("raw_query")] = b"\x00\xff"
    assert event_record(row, with_raw=True)["raw"]["query_base64"] == "AP8="


def test_a_row_as_stored_makes_the_same_record_checked_or_not() -> None:
    for name in ("outbound-hangup", "outbound-dial-out-cyrillic-name", "queue-agent-dial-in"):
        row = stored(name)
        assert event_record(row, with_raw=True) == trusted_record(row, with_raw=True)
        assert not any(flag.startswith("damaged_value") for flag in event_record(row)["flags"])


def test_a_record_has_every_field_of_the_api_once_in_its_order() -> None:
    # trusted_record fills a copy of a record of RECORD_FIELDS: a field it fills that is not
    # there would come last, one not filled would stay None
    row = stored("outbound-hangup")
    for at, value in enumerate(row):  # every column of the row holds a value
        if value is None:
            row[at] = 1 if STORED_FIELDS[at] in (*OPTIONAL_INTEGERS, "bridged") else "x"
    record = trusted_record(row, with_raw=True)
    assert list(record) == [*RECORD_FIELDS, "raw"]
    assert tuple(EVENT_FIELDS) == RECORD_FIELDS
    assert [field for field in RECORD_FIELDS if record[field] is None] == []


def stored_record() -> dict[str, Any]:
    return event_record(stored())
