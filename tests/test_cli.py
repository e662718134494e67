"""The query commands over a real database, through click's runner."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import httpx2 as httpx
import pytest
from click.testing import CliRunner

from pbx_emulator.cli import pbx
from receiver.cli import main
from receiver.event import RawRequest
from receiver.parse import parse_request
from receiver.store import SCHEMA_VERSION
from tests.conftest import ROOT, free_port, stored_by_version, wait_for_calls


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


def test_reports_in_a_time_zone(db: Path, make_client) -> None:  # type: ignore[no-untyped-def]
    """The sample calls run 07:00-09:20 UTC on 1 December: 23:00-01:20 in Los Angeles, so there
    the first three (2566*102's, 07:00-07:10) are on 30 November."""
    zone = "America/Los_Angeles"
    days = json.loads(run("report", "extensions", "--db", str(db), "--format", "json",
                          "--by", "day", "--tz", zone))  # fmt: skip
    of_102 = {r["period"]: r["calls"] for r in days if r["extension"] == "2566*102"}
    assert of_102 == {"2025-11-30T00:00:00.000000-08:00": 3, "2025-12-01T00:00:00.000000-08:00": 4}
    api = make_client(db=db).get(f"/api/reports/extensions?by=day&tz={zone}").json()
    assert days == api["extensions"]  # the command and the API agree
    # --since without an offset is on the zone's clock: 00:20 there is 08:20 UTC.
    missed = json.loads(run("report", "missed", "--db", str(db), "--format", "json",
                            "--tz", zone, "--since", "2025-12-01T00:20"))  # fmt: skip
    assert [(r["number"], r["last_missed_at"]) for r in missed] == [
        ("+79035556677", "2025-12-01T00:30:00.931000-08:00")
    ]
    utc = json.loads(run("report", "missed", "--db", str(db), "--format", "json"))
    assert {r["last_missed_at"][-1] for r in utc} == {"Z"}  # no zone asked: UTC, as before
    by_variable = CliRunner().invoke(
        main, ["report", "missed", "--db", str(db), "--format", "json", "--since",
               "2025-12-01T00:20"], env={"RECEIVER_TIMEZONE": zone}
    )  # fmt: skip
    assert json.loads(by_variable.output) == missed
    wrong = CliRunner().invoke(main, ["report", "missed", "--db", str(db), "--tz", "Mars/Base"])
    assert wrong.exit_code == 2
    assert "'Mars/Base' is not a time zone: give an IANA name such as Europe/Moscow" in wrong.output


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


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`receiver serve` as a real process that is expected to stop at start."""
    command = [sys.executable, "-m", "receiver", "serve", *args]
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def one_line(text: str) -> str:
    """The whole of an error that reaches the user: one line, no traceback."""
    assert len(text.strip().splitlines()) == 1, text
    assert "Traceback" not in text and "Errno" not in text
    return text.strip()


def test_a_port_in_use_says_which_and_what_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args, env in [(["--port", port], {}), ([], {"RECEIVER_PORT": port})]:
            done = serve("--db", str(tmp_path / "r.db"), *args, env=env)
            assert done.returncode == 1
            line = one_line(done.stderr)
            assert f"port {port} on 127.0.0.1 is already in use" in line
            assert "--port or RECEIVER_PORT" in line


def test_serve_refuses_a_db_that_is_not_sqlite(tmp_path: Path) -> None:
    not_db = tmp_path / "access.log"
    not_db.write_text('127.0.0.1 - - [01/Dec/2025:10:00:00 +0300] "GET / HTTP/1.1" 200 1\n')
    done = serve("--db", str(not_db), "--port", str(free_port()))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"--db {not_db} is not an SQLite database" in line
    assert "--db expects the receiver's database" in line
    done = serve("--db", str(tmp_path / "no" / "r.db"), "--port", str(free_port()))
    assert "the folder" in one_line(done.stderr) and "does not exist" in done.stderr


@pytest.mark.parametrize(
    "command",
    [["calls"], ["events"], ["events", "--format", "ndjson"], ["report", "missed"],
     ["report", "extensions"], ["replay", "-q", str(ROOT / "sample_payloads" / "callback.txt")]],
)  # fmt: skip
def test_the_other_commands_refuse_a_db_that_is_not_sqlite(
    tmp_path: Path, command: list[str]
) -> None:
    not_db = tmp_path / "notes.txt"
    not_db.write_text("not a database\n")
    result = CliRunner().invoke(main, [*command, "--db", str(not_db)])
    assert result.exit_code == 1
    assert f"--db {not_db} is not an SQLite database" in one_line(result.output)


def test_the_read_commands_say_their_db_must_exist() -> None:
    for command in (["calls"], ["events"], ["report", "missed"], ["report", "extensions"]):
        text = " ".join(run(*command, "--help").split())
        assert "created if missing" not in text
        assert (
            "The database `receiver serve` writes: an SQLite file (it must exist) or a "
            "postgresql:// URL." in text
        )


def test_serve_logs_its_database_and_the_url_to_register(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    running = server("--log-level", "info")
    log = running.log.read_text()
    assert f"database {db_path.absolute()}" in log
    webhook = f"{running.url}/webhook?myid=<extension id>"
    assert f"listening on {running.url}: register {webhook} with the PBX" in log


def every_command(
    command: click.Command, path: tuple[str, ...] = ("receiver",)
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """The command and, for a group, every command under it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from every_command(sub, (*path, name))


COMMANDS = [*every_command(main), *every_command(pbx, ("receiver-pbx",))]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_examples_and_every_option_a_help(
    path: tuple[str, ...], command: click.Command
) -> None:
    nameless = [o.opts[0] for o in command.params if isinstance(o, click.Option) and not o.help]
    assert nameless == [], f"{' '.join(path)}: options without help"
    top = main if path[0] == "receiver" else pbx
    shown = CliRunner().invoke(top, [*path[1:], "--help"], terminal_width=100).output
    assert "Examples:" in shown, shown
    examples = shown.split("Examples:")[1].split("Options:")[0].strip().splitlines()
    assert examples and all(
        line.strip().startswith(("receiver ", "receiver-pbx ", "RECEIVER_", "url="))
        for line in examples
    )


def test_rebuild_builds_every_call_again_and_counts_those_that_changed(db: Path) -> None:
    first = run("rebuild", "--db", str(db))
    assert first.startswith("rebuilt 12 calls from ") and first.endswith(": 0 changed\n")
    with sqlite3.connect(db) as other:  # a call built otherwise (by an older release, say)
        other.execute("UPDATE calls SET status = 'busy' WHERE status = 'missed'")
    assert run("rebuild", "--db", str(db)).endswith(": 2 changed\n")
    missed = json.loads(run("calls", "--db", str(db), "--format", "json", "--status", "missed"))
    assert len(missed) == 2


def test_the_read_commands_say_when_the_calls_are_behind_the_events(tmp_path: Path) -> None:
    path = tmp_path / "behind.db"
    queries = [line for line in (ROOT / "sample_payloads" / "callback.txt").read_text().splitlines()
               if line and not line.startswith("#")]  # fmt: skip
    raws = [RawRequest("GET", f"myid=1&{query}".encode()) for query in queries]
    events = [parse_request(raw, received_at_us=1, source="t")[0] for raw in raws]
    stored_by_version(path, SCHEMA_VERSION, events)  # stored, no call built yet
    for command in (["calls"], ["report", "missed"], ["report", "extensions"]):
        result = CliRunner().invoke(main, [*command, "--db", str(path), "--format", "json"])
        assert (result.exit_code, result.stdout) == (0, "[]\n")
        assert f"`receiver rebuild --db {path}`" in result.stderr, command
        assert "another version of call building (0, this is 1)" in result.stderr
    run("rebuild", "--db", str(path))
    result = CliRunner().invoke(main, ["calls", "--db", str(path), "--format", "json"])
    assert (len(json.loads(result.stdout)), result.stderr) == (1, "")


def test_rebuild_while_a_server_stores_on_the_same_file(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = sorted((ROOT / "sample_payloads").glob("*.txt"))
    deliveries = [f"myid=1&{line}" for path in files for line in path.read_text().splitlines()
                  if line and not line.startswith("#")]  # fmt: skip
    running = server()
    half = len(deliveries) // 2
    with httpx.Client(base_url=running.url) as api:
        for query in deliveries[:half]:
            assert api.get(f"/webhook?{query}").status_code == 200
        rebuild = subprocess.Popen(
            [sys.executable, "-m", "receiver", "rebuild", "--db", str(db_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for query in deliveries[half:]:  # stored while the rebuild goes on, or after it
            assert api.get(f"/webhook?{query}").status_code == 200
        out, err = rebuild.communicate(timeout=60)
        assert rebuild.returncode == 0, err
        assert out.startswith("rebuilt ") and out.endswith(" changed\n")
        wait_for_calls(api.get)
        assert len(api.get("/api/calls").json()["calls"]) == 12


def test_reparse_while_a_server_stores_on_the_same_file(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = sorted((ROOT / "sample_payloads").glob("*.txt"))
    lines = [line for path in files for line in path.read_text().splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    deliveries = [f"myid={myid}&{line}" for myid in range(1, 11) for line in lines]
    running = server()
    half = len(deliveries) // 2
    answers = []
    with httpx.Client(base_url=running.url) as api:
        for query in deliveries[:half]:
            answers.append(api.get(f"/webhook?{query}"))
        with sqlite3.connect(db_path) as other:  # numbers as a parser that lost the '+' stored
            wrong = other.execute(
                "UPDATE events SET caller_id_num = substr(caller_id_num, 2) "
                "WHERE caller_id_num LIKE '+%'"
            ).rowcount
        assert wrong > 0
        reparse = subprocess.Popen(
            [sys.executable, "-m", "receiver", "rebuild", "--reparse", "--db", str(db_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # The other half, then repeats of them all, for as long as the re-parse runs.
        sent = half
        while sent < len(deliveries) or reparse.poll() is None:
            answers.append(api.get(f"/webhook?{deliveries[sent % len(deliveries)]}"))
            sent += 1
        out, err = reparse.communicate(timeout=60)
        assert reparse.returncode == 0, err
        assert [answer.status_code for answer in answers] == [200] * sent
        first = out.splitlines()[0]
        read = int(first.split()[1])  # up to the newest event when it started
        assert answers[half - 1].json()["id"] <= read <= len(deliveries)
        assert first.endswith(f": {wrong} changed, 0 merged as repeats, 0 refused by this "
                              "parser (kept as stored)")  # fmt: skip
        stored = {answer.json()["id"] for answer in answers}
        with sqlite3.connect(db_path) as other:
            ids = {event_id for (event_id,) in other.execute("SELECT id FROM events")}
            [(repeats,)] = other.execute("SELECT sum(duplicates) FROM events")
            unfixed = other.execute(
                "SELECT count(*) FROM events WHERE caller_id_num NOT LIKE '+%' "
                "AND caller_id_num GLOB '[0-9]*' AND length(caller_id_num) > 10"
            ).fetchone()[0]
        assert (ids, len(ids), unfixed) == (stored, len(deliveries), 0)
        assert repeats == sent - len(deliveries)  # each repeat counted, none lost to a batch
        wait_for_calls(api.get)
        assert len(api.get("/api/calls").json()["calls"]) == 12
    again = run("rebuild", "--reparse", "--db", str(db_path))
    assert ": 0 changed, 0 merged as repeats, 0 refused" in again


def test_a_libpq_connection_string_is_refused_not_made_an_sqlite_file(tmp_path: Path) -> None:
    conninfo = "user=postgres dbname=receiver host=127.0.0.1 port=5432"
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--db", conninfo, "--port", str(free_port())],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "a libpq key=value connection string" in line and "postgresql://" in line
    for command in (["events"], ["calls"], ["upgrade"]):
        result = CliRunner().invoke(main, [*command, "--db", conninfo])
        assert result.exit_code == 1, result.output
        assert "libpq key=value" in one_line(result.output)
    assert list(tmp_path.iterdir()) == []  # no SQLite file named after it
