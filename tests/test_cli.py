"""The query commands over a real database, through click's runner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from receiver.cli import main
from tests.conftest import ROOT


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cli.db"
    files = [str(p) for p in sorted((ROOT / "sample_payloads").glob("*.txt"))]
    result = CliRunner().invoke(main, ["replay", "-q", "--db", str(path), "--myid", "1", *files])
    assert result.exit_code == 0, result.output
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_calls_table_and_json(db: Path) -> None:
    table = run("calls", "--db", str(db), "--format", "table")
    assert table.splitlines()[0].split()[:3] == ["started_at", "direction", "status"]
    calls = json.loads(run("calls", "--db", str(db), "--format", "json"))
    assert len(calls) == 12  # one per call scenario
    missed = json.loads(run("calls", "--db", str(db), "--format", "json", "--status", "missed"))
    assert {c["external_number"] for c in missed} == {"+74957654321", "+79035556677"}


def test_events_ndjson_is_replayable(db: Path, tmp_path: Path) -> None:
    out = run("events", "--db", str(db), "--format", "ndjson", "--number", "+7 916 111 22 33")
    records = [json.loads(line) for line in out.splitlines()]
    assert records and all("raw" in r for r in records)
    export = tmp_path / "export.ndjson"
    export.write_text(out)
    fresh = tmp_path / "fresh.db"
    assert f"stored  {len(records)}" in run("replay", "--db", str(fresh), str(export))


def test_reports(db: Path) -> None:
    missed = json.loads(run("report", "missed", "--db", str(db), "--format", "json"))
    assert {r["number"] for r in missed} == {"+74957654321", "+79035556677"}
    text = run("report", "extensions", "--db", str(db), "--format", "csv", "--by", "hour")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {"extension", "period", "calls", "answered", "missed"} <= set(rows[0])


def test_limit_and_empty_results(db: Path) -> None:
    assert (
        len(run("events", "--db", str(db), "--format", "ndjson", "--limit", "2").splitlines()) == 2
    )
    empty = run("calls", "--db", str(db), "--format", "table", "--number", "000")
    assert "(nothing matched)" in empty


def test_bad_input_is_explained(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["calls", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "no database at" in result.output
    result = CliRunner().invoke(main, ["events", "--db", str(tmp_path / "x.db"), "--since", "soon"])
    assert result.exit_code == 2
    assert "is not a time" in result.output
