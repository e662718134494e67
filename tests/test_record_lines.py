"""Records as NDJSON lines and CSV rows: the one writer of the API's streams and the CLI."""

from __future__ import annotations

import csv
import io
import json

import pytest

from receiver.record_lines import RecordLines

RECORDS = [
    {"call_id": "c1", "extensions": ["2566*101", "2566*102"], "talk": 41.25, "did": None},
    {"call_id": "c2", "extensions": [], "talk": None, "did": "74959998877", "more": "left out"},
]


def written(fmt: str) -> str:
    out = io.StringIO()
    lines = RecordLines(fmt, out)
    for record in RECORDS:
        lines.add(record)
    return out.getvalue()


def test_ndjson_is_a_record_a_line() -> None:
    assert [json.loads(line) for line in written("ndjson").splitlines()] == RECORDS


def test_csv_has_the_first_records_fields_and_lists_as_json() -> None:
    rows = list(csv.DictReader(io.StringIO(written("csv"))))
    assert list(rows[0]) == ["call_id", "extensions", "talk", "did"]
    assert rows[0]["extensions"] == '["2566*101", "2566*102"]' and rows[0]["did"] == ""
    assert rows[1] == {"call_id": "c2", "extensions": "[]", "talk": "", "did": "74959998877"}


def test_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of ndjson, csv"):
        RecordLines("xml", io.StringIO())
