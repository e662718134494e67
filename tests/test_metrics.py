"""/metrics, /readyz and the JSON log, on real server processes."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, sample

HANGUP = sample("outbound-hangup")


def live(n: int, *, at_us: int | None = None) -> str:
    """A real hangup made unique by its CallID, with EventTime now (or `at_us`)."""
    event_time = at_us if at_us is not None else time.time_ns() // 1000
    return HANGUP.replace("b5187f38a9cc43f2ba068bce983a513e", f"{n:032x}").replace(
        "EventTime=1502985750238219", f"EventTime={event_time}"
    )


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by Prometheus' own parser: (sample name, labels) -> value."""
    answer = httpx.get(f"{url}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (found.name, tuple(sorted(found.labels.items()))): found.value
        for family in text_string_to_metric_families(answer.text)
        for found in family.samples
    }


def one(figures: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
        **labels: str) -> float:  # fmt: skip
    return figures[(name, tuple(sorted(labels.items())))]


@pytest.mark.slow
def test_the_metrics_parse_and_count_what_was_sent(server) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server()
    before = scrape(running.url)
    assert one(before, "receiver_deliveries_total", outcome="stored") == 0
    with httpx.Client(base_url=running.url) as client:
        for n in range(30):
            assert client.get(f"/webhook?myid=175&{live(n)}").status_code == 200
        for n in range(5):
            assert client.get(f"/webhook?myid=176&{live(100 + n)}").status_code == 200
        repeat = live(0)  # a new EventTime: a new event, then its repeats
        assert client.get(f"/webhook?myid=175&{repeat}").json()["duplicate"] is False
        for _ in range(4):
            assert client.get(f"/webhook?myid=175&{repeat}").json()["duplicate"] is True
        for _ in range(3):
            assert client.get(f"/webhook?{live(7)}").status_code == 400  # no myid
        assert client.put(f"/webhook?myid=175&{live(8)}").status_code == 405
    figures = scrape(running.url)
    assert one(figures, "receiver_deliveries_total", outcome="stored") == 36
    assert one(figures, "receiver_deliveries_total", outcome="duplicate") == 4
    assert one(figures, "receiver_deliveries_total", outcome="refused") == 4
    assert one(figures, "receiver_deliveries_total", outcome="not_stored") == 0
    assert one(figures, "receiver_refused_deliveries_total", reason="malformed") == 3
    assert one(figures, "receiver_refused_deliveries_total", reason="method") == 1
    assert one(figures, "receiver_refused_deliveries_total", reason="token") == 0
    assert one(figures, "receiver_ingest_seconds_count") == 40
    assert 0 < one(figures, "receiver_ingest_seconds_sum") < 40
    assert one(figures, "receiver_ingest_seconds_bucket", le="+Inf") == 40
    # Every delivery and every refusal kept went through a group commit.
    assert one(figures, "receiver_group_commit_size_sum") == 44
    assert 1 <= one(figures, "receiver_group_commit_size_count") <= 44
    assert one(figures, "receiver_events") == 36
    assert one(figures, "receiver_writer_up") == 1
    assert one(figures, "receiver_writer_queue_depth") == 0
    assert one(figures, "receiver_calls_backlog_events") >= 0
    assert one(figures, "receiver_database_bytes") > 0
    assert one(figures, "receiver_disk_free_bytes") > 0
    assert 0 <= one(figures, "receiver_newest_event_age_seconds", myid="175") < 60
    assert 0 <= one(figures, "receiver_newest_event_age_seconds", myid="176") < 60
    # No label but the closed sets and the myids: no call ids, no numbers.
    labels = {name for (_, found), _ in figures.items() for name, _ in found}
    assert labels <= {"outcome", "reason", "le", "myid"}
    assert "receiver_silent" not in {name for name, _ in figures}  # no --silence-after


def test_metrics_need_the_api_token_unless_public(make_client) -> None:  # type: ignore[no-untyped-def]
    closed = make_client(api_token="reader")
    assert closed.get("/metrics").status_code == 401
    answer = closed.get("/metrics", headers={"Authorization": "Bearer reader"})
    assert answer.status_code == 200
    assert "receiver_deliveries_total" in answer.text
    public = make_client(api_token="reader", metrics_public=True)
    assert public.get("/metrics").status_code == 200
    assert public.get("/api/events").status_code == 401  # only /metrics is opened


def test_ready_says_what_is_wrong(make_client) -> None:  # type: ignore[no-untyped-def]
    ready = make_client()
    answer = ready.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["ok"] is True and answer.json()["disk_free_bytes"] > 0
    short = make_client(min_free_disk=2**50)  # more than any disk here has
    answer = short.get("/readyz")
    assert answer.status_code == 503
    assert "under --min-free-disk 1125899906842624: free some space" in answer.json()["error"]
    assert short.get("/healthz").status_code == 200  # alive all the same


def test_a_write_lock_held_elsewhere_makes_it_not_ready(make_client, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    ready = make_client()
    assert ready.get("/readyz").status_code == 200
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        answer = ready.get("/readyz")
        assert answer.status_code == 503
        assert "the database took no write lock within 2 s" in answer.json()["error"]
        assert ready.get("/healthz").status_code == 200  # alive: reads go on
    finally:
        other.execute("ROLLBACK")
        other.close()
    deadline = time.monotonic() + 10  # the probe that timed out ends, and the next succeeds
    while ready.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.slow
def test_json_logs_one_object_a_line_with_the_token_masked(server) -> None:  # type: ignore[no-untyped-def]
    running: ServerProcess = server(
        "--log-format", "json", "--access-log", "--log-level", "info", "--token", "s3cret"
    )
    assert httpx.get(f"{running.url}/webhook?myid=1&token=s3cret&{live(1)}").status_code == 200
    assert httpx.get(f"{running.url}/webhook?myid=1&token=n0tit&{live(2)}").status_code == 403
    _, log = running.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    delivered = [line for line in access if line["path"].startswith("/webhook")]
    assert [line["status"] for line in delivered] == [200, 403]
    assert all("token=***" in line["path"] for line in delivered)
    assert "s3cret" not in log and "n0tit" not in log
    refused = [line for line in lines if line["message"].startswith("refused a delivery")]
    assert refused and "token is missing or wrong for myid 1" in refused[0]["message"]
