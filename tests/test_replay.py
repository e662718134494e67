"""Replay from access logs, query-string files and NDJSON exports, on real SQLite files."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.event import event_json
from receiver.parse import RawRequest, parse_request
from tests.conftest import ROOT, sample

PAYLOADS = sorted((ROOT / "sample_payloads").glob("*.txt"))
QUEUE = ROOT / "sample_payloads" / "queue-rounds.txt"


def payload_lines(path: Path = QUEUE) -> list[str]:
    return [x for x in path.read_text().splitlines() if x and not x.startswith("#")]


def replay(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replay", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def rows(db: Path, sql: str = "SELECT call_id, event_type, source FROM events ORDER BY id") -> list:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def comparable(record: dict) -> dict:
    """An event's JSON without what depends on how and when it arrived."""
    return {k: v for k, v in record.items() if k not in ("id", "source", "received_at", "raw")}


def access_line(query: str, *, method: str = "GET", path: str = "/webhook", when: str = "") -> str:
    when = when or "17/Aug/2017:16:01:26 +0000"
    return (
        f'185.45.152.42 - - [{when}] "{method} {path}?{query} HTTP/1.1" 200 38 "-" '
        '"Telphin-Events/1.0"'
    )


NOISE = [
    '66.249.66.1 - - [17/Aug/2017:16:01:27 +0000] "GET /robots.txt HTTP/1.1" 404 0 "-" "Googlebot"',
    '127.0.0.1 - - [17/Aug/2017:16:01:28 +0000] "GET /healthz HTTP/1.1" 200 15 "-" "curl/8"',
    '10.0.0.5 - - [17/Aug/2017:16:01:29 +0000] "GET /webhook?myid=1 HTTP/1.1" 400 90 "-" "x"',
]


def test_query_lines_give_the_same_events_as_live_deliveries(tmp_path: Path, client) -> None:  # type: ignore[no-untyped-def]
    lines = [line for path in PAYLOADS for line in payload_lines(path)]
    for line in lines:
        assert client.get(f"/webhook?myid=9&{line}").status_code == 200
    live = [comparable(e) for e in client.get("/api/events?limit=1000").json()["events"]]
    db = tmp_path / "replayed.db"
    code, output = replay("--db", str(db), "--myid", "9", *map(str, PAYLOADS))
    assert code == 0, output
    assert f"stored  {len(lines)}" in output
    replayed = sqlite3.connect(db).execute("SELECT count(*), min(source) FROM events").fetchone()
    assert replayed == (len(lines), "replay:query-lines")
    # the same records, field by field (the event API reads the replayed database)
    from starlette.testclient import TestClient

    from receiver.settings import Settings
    from receiver.web.app import create_app

    with TestClient(create_app(Settings(db=db))) as other:
        again = [comparable(e) for e in other.get("/api/events?limit=1000").json()["events"]]
    assert again == live


def test_replaying_twice_adds_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    assert replay("--db", str(db), "--myid", "1", str(QUEUE))[0] == 0
    code, output = replay("--db", str(db), "--myid", "1", str(QUEUE))
    assert code == 0
    assert "stored  0" in output
    assert f"duplicates  {len(payload_lines())}" in output
    assert len(rows(db)) == len(payload_lines())


def test_access_log_with_noise_and_log_time(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    events = [access_line(f"myid=96858&{q}", when=f"17/Aug/2017:16:02:{n:02d} +0300")
              for n, q in enumerate(payload_lines())]  # fmt: skip
    log.write_text("\n".join([*NOISE, *events, ""]))
    db = tmp_path / "r.db"
    code, output = replay("--db", str(db), str(log))
    assert code == 0, output
    assert f"stored  {len(events)}" in output
    assert "not an event delivery: 3" in output
    received = rows(db, "SELECT received_at_us, source FROM events ORDER BY received_at_us")
    # 16:02:00 +0300 is 13:02:00 UTC
    assert received[0] == (1502974920000000, "replay:access-log")
    assert all(source == "replay:access-log" for _, source in received)


def test_common_format_and_path_filter(tmp_path: Path) -> None:
    hangup = sample("outbound-hangup")
    log = tmp_path / "access.log"
    log.write_text(
        f'1.2.3.4 - - [17/Aug/2017:16:01:26 +0000] "GET /webhook?myid=1&{hangup} HTTP/1.1" 200 38\n'
        f'1.2.3.4 - - [17/Aug/2017:16:01:26 +0000] "GET /old?myid=1&{hangup} HTTP/1.1" 200 38\n'
    )
    db = tmp_path / "r.db"
    code, output = replay("--db", str(db), "--path", "/webhook", str(log))
    assert code == 0, output
    assert "stored  1" in output
    assert "other path: 1" in output


def test_custom_nginx_format_with_post_bodies(tmp_path: Path) -> None:
    body = sample("outbound-answer").replace("%", "\\x25")  # nginx escapes nothing here, but try
    log = tmp_path / "access.log"
    log.write_text(
        f'2017-08-17T16:02:18+00:00 POST /webhook?myid=175 200 "{body}"\n'
        '2017-08-17T16:02:19+00:00 POST /webhook?myid=175 200 "-"\n'
    )
    db = tmp_path / "r.db"
    fmt = '$time_iso8601 $request_method $request_uri $status "$request_body"'
    code, output = replay("--db", str(db), "--log-format", fmt, str(log))
    assert code == 0, output
    assert "stored  1" in output
    assert "POST body not in the log" not in output  # it was logged, as '-'
    stored = rows(db, "SELECT event_type, caller_id_name, raw_method FROM events")
    assert stored == [("answer", "Пукин Васисуалий Карлович", "POST")]


def test_post_without_logged_body_is_skipped_with_a_hint(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(access_line("myid=1", method="POST") + "\n")
    code, output = replay("--db", str(tmp_path / "r.db"), str(log))
    assert code == 0
    assert "log $request_body" in output


def test_apache_log_format(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        f'185.45.152.42 - - [17/Aug/2017:16:01:26 +0000] "GET /webhook?myid=2&'
        f'{sample("queue-agent-dial-in")} HTTP/1.1" 200 38 "-" "Mozilla/5.0 \\"x\\""\n'
    )
    fmt = r"%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\""
    code, output = replay("--db", str(tmp_path / "r.db"), "--log-format", fmt, str(log))
    assert code == 0, output
    assert "stored  1" in output


def test_log_format_without_the_request_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("x\n")
    code, output = replay("--db", str(tmp_path / "r.db"), "--log-format", "$status", str(log))
    assert code == 1
    assert "must log the request" in output


def test_gzip_is_detected_by_content(tmp_path: Path) -> None:
    log = tmp_path / "access.log.1"  # no .gz in the name
    lines = [access_line(f"myid=3&{q}") for q in payload_lines()]
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    code, output = replay("--db", str(tmp_path / "r.db"), str(log))
    assert code == 0, output
    assert f"stored  {len(lines)}" in output


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "access.log.gz"
    log.write_bytes(gzip.compress(("\n".join(payload_lines()) * 50).encode())[:200])
    code, output = replay("--db", str(tmp_path / "r.db"), "--myid", "1", str(log))
    assert code == 1
    assert "cannot read past this point" in output


def test_malformed_lines_are_counted_and_shown(tmp_path: Path) -> None:
    lines = payload_lines()
    log = tmp_path / "lines.txt"
    log.write_text("\n".join([lines[0], "CallID=x&SubCallID=y", lines[1], "garbage", ""]))
    db = tmp_path / "r.db"
    code, output = replay("--db", str(db), "--myid", "1", "--format", "query-lines", str(log))
    assert code == 1
    assert "stored  2" in output
    assert "malformed  2" in output
    assert f"{log}:2: EventType is missing" in output
    assert f"{log}:4: EventType is missing" in output
    strict_db = tmp_path / "strict.db"
    code, output = replay("--db", str(strict_db), "--myid", "1", "--strict", str(log))
    assert code == 1
    assert "malformed  1" in output
    assert len(rows(strict_db)) <= 1  # stopped at line 2


def test_a_strict_stop_counts_and_builds_every_chunk_already_stored(tmp_path: Path) -> None:
    """Chunks are stored while the next is parsed: those handed over before the malformed line
    are stored, counted in the summary, and their calls built."""
    from receiver.replay.run import CHUNK

    calls = CHUNK * 2 + 500  # more than two chunks, one event each
    lines = [f"EventType=hangup&EventTime={1000 + n}&CallID=c{n}&CallStatus=ANSWER"
             for n in range(calls)]  # fmt: skip
    log = tmp_path / "lines.txt"
    log.write_text("\n".join([*lines, "garbage", *lines[:10], ""]))
    db = tmp_path / "r.db"
    code, output = replay("--db", str(db), "--myid", "1", "--strict", str(log))
    assert code == 1 and "malformed  1" in output
    stored = len(rows(db))
    assert stored >= 2 * CHUNK  # the chunks handed over before the line
    assert f"stored  {stored:,}" in output
    assert len(rows(db, "SELECT call_id FROM calls")) == stored


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    code, output = replay("--db", str(db), "--myid", "1", "--dry-run", str(QUEUE))
    assert code == 0
    assert f"parsed (dry run)  {len(payload_lines())}" in output
    assert not db.exists()


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    odd = tmp_path / "odd.txt"
    odd.write_text("hello world\n")
    code, output = replay("--db", str(tmp_path / "r.db"), str(odd))
    assert (code, "cannot tell the format" in output) == (1, True)
    code, output = replay("--db", str(tmp_path / "r.db"), str(tmp_path / "missing.log"))
    assert (code, "cannot read" in output) == (1, True)


def test_ndjson_export_round_trips_every_field(tmp_path: Path, client) -> None:  # type: ignore[no-untyped-def]
    for path in PAYLOADS:
        for line in payload_lines(path):
            client.get(f"/webhook?myid=5&{line}")
    client.post("/webhook?myid=5", content=b"EventType=x&Name=%C8%E2%E0%ED",
                headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    count = len(client.get("/api/events?limit=1000").json()["events"])
    exported = [client.get(f"/api/events/{n}").json() for n in range(1, count + 1)]
    export = tmp_path / "export.ndjson"
    export.write_text("".join(json.dumps(record) + "\n" for record in exported))
    db = tmp_path / "fresh.db"
    code, output = replay("--db", str(db), str(export))
    assert code == 0, output
    from starlette.testclient import TestClient

    from receiver.settings import Settings
    from receiver.web.app import create_app

    with TestClient(create_app(Settings(db=db))) as fresh:
        back = [fresh.get(f"/api/events/{n}").json() for n in range(1, count + 1)]
    for before, after in zip(exported, back, strict=True):
        assert after["source"] == "replay:ndjson"
        assert {**after, "source": None, "duplicates": 0} == {
            **before,
            "source": None,
            "duplicates": 0,
        }


def test_stdin_in_a_real_process(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    lines = "\n".join(access_line(f"myid=4&{q}") for q in payload_lines()).encode()
    result = subprocess.run(
        [sys.executable, "-m", "receiver", "replay", "--db", str(db), "-"],
        input=gzip.compress(lines), capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(rows(db)) == len(payload_lines())


def test_overlap_with_live_events_adds_only_the_missing(tmp_path: Path, client, db_path) -> None:  # type: ignore[no-untyped-def]
    lines = payload_lines()
    for line in lines[:5]:
        client.get(f"/webhook?myid=96858&{line}")
    log = tmp_path / "access.log"
    log.write_text("\n".join(access_line(f"myid=96858&{q}") for q in lines) + "\n")
    code, output = replay("--db", str(db_path), str(log))
    assert code == 0, output
    assert f"stored  {len(lines) - 5}" in output
    assert "duplicates  5" in output
    sources = [source for _, _, source in rows(db_path)]
    assert sources == ["http-get"] * 5 + ["replay:access-log"] * (len(lines) - 5)


def test_to_a_running_receiver(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running = server("--token", "s3")
    log = tmp_path / "access.log"
    lines = payload_lines()
    log.write_text("\n".join(access_line(f"myid=7&{q}") for q in lines) + "\n")
    url = f"{running.url}/webhook?token=s3"
    code, output = replay("--to", url, "--concurrency", "4", "--rate", "500", str(log))
    assert code == 0, output
    assert f"delivered  {len(lines)}" in output
    code, output = replay("--to", url, str(log))
    assert f"duplicates  {len(lines)}" in output
    # a refused delivery (wrong token) is a failure, with the answer shown
    code, output = replay("--to", f"{running.url}/webhook?token=bad", "--retries", "0", str(log))
    assert code == 1
    assert "refused with HTTP 403" in output
    running.stop()
    stored = rows(running.db, "SELECT myid, source FROM events")
    assert stored == [("7", "http-get")] * len(lines)


def test_to_an_unreachable_receiver_fails_after_retries(tmp_path: Path) -> None:
    code, output = replay("--to", "http://127.0.0.1:9/webhook", "--retries", "1", "--myid", "1",
                          str(QUEUE))  # fmt: skip
    assert code == 1
    assert "not delivered after 2 tries" in output


@pytest.mark.parametrize("query", ["myid=1&EventType=answer&EventTime=1", ""])
def test_query_line_forms(query: str) -> None:
    from receiver.replay.run import query_line

    for line in (query, f"/webhook?{query}", f"https://h/webhook?{query}"):
        delivery = query_line(line.encode(), "x:1")
        assert delivery.raw == RawRequest("GET", query.encode())


def test_replay_parses_like_live() -> None:
    from receiver.replay.run import Options, parse_delivery, query_line

    line = "myid=1&" + sample("outbound-hangup")
    replayed = parse_delivery(query_line(line.encode(), "x:1"), Options())
    live, _ = parse_request(RawRequest("GET", line.encode()), received_at_us=1, source="x")
    assert comparable(event_json(replayed)) == comparable(event_json(live))


def test_replay_refuses_a_myid_of_the_wrong_shape(tmp_path: Path) -> None:
    code, output = replay("--db", str(tmp_path / "r.db"), "--myid", "a b", str(QUEUE))
    assert code == 2
    assert "is not a valid myid" in output
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        (b"EventType=answer", b"t=1&myid=9&EventType=answer"),
        (b"%6Dyid=5&EventType=answer", b"t=1&%6Dyid=5&EventType=answer"),  # it has one, encoded
        (b"MYID=5", b"t=1&MYID=5"),
        (b"CallerMyid=5", b"t=1&myid=9&CallerMyid=5"),  # another field, not a myid
    ],
)
def test_sending_adds_a_myid_only_to_a_query_without_one(query: bytes, sent: bytes) -> None:
    import httpx2 as httpx

    from receiver.replay.run import Delivery, target_url

    delivery = Delivery(RawRequest("GET", query), "replay:query-lines", None, None, "f:1")
    url = target_url(httpx.URL("http://127.0.0.1:1/webhook?t=1"), delivery, "9")
    assert url.query == sent
