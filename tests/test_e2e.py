"""`receiver serve` as a real process on a real port: killed mid-load, it loses nothing answered."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from receiver.event import RawRequest
from receiver.parse import parse_request
from tests.conftest import sample, stored_by_version

HANGUP = sample("outbound-hangup")


def delivery(worker: int, n: int) -> str:
    """A real hangup made unique by its CallID."""
    call_id = f"{worker:04x}{n:028x}"
    return HANGUP.replace("b5187f38a9cc43f2ba068bce983a513e", call_id)


def load(
    url: str, workers: int, stop: threading.Event, answered: set[str] | None = None
) -> set[str]:
    """Send unique deliveries (GET and POST) from threads until `stop`; return the answered
    (gathered in `answered` as they come, when given)."""
    answered = set() if answered is None else answered
    lock = threading.Lock()

    def work(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            n = 0
            while not stop.is_set():
                payload = delivery(worker, n)
                n += 1
                try:
                    if n % 2:
                        response = client.get(f"{url}/webhook?myid=7&{payload}")
                    else:
                        response = client.post(
                            f"{url}/webhook?myid=7",
                            content=payload,
                            headers={"content-type": "application/x-www-form-urlencoded"},
                        )
                except httpx.TransportError:
                    continue  # the server died under this request: it was not answered
                if response.status_code == 200:
                    with lock:
                        answered.add(payload.split("CallID=")[1].split("&")[0])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered


def stored_call_ids(url: str) -> list[str]:
    ids, after = [], None
    with httpx.Client(timeout=10) as client:
        while True:
            params = {"limit": 1000, **({"after": after} if after else {})}
            page = client.get(f"{url}/api/events", params=params).json()
            ids += [event["call_id"] for event in page["events"]]
            after = page["next"]
            if after is None:
                return ids


def run_load_then(server_url: str, action, at_least: int = 200) -> set[str]:  # type: ignore[no-untyped-def]
    """Load the server until it has answered `at_least` deliveries (however busy the machine
    is: up to a minute), then do `action` under the load that goes on."""
    stop = threading.Event()
    answered: set[str] = set()
    result: list[set[str]] = []
    runner = threading.Thread(target=lambda: result.append(load(server_url, 8, stop, answered)))
    runner.start()
    deadline = time.monotonic() + 60
    while len(answered) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    action()
    stop.set()
    runner.join()
    return result[0]


def test_sigkill_mid_load_loses_nothing_answered(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = server()
    writer = writer_pid(first)
    answered = run_load_then(first.url, lambda: first.stop(signal.SIGKILL))
    assert len(answered) > 50  # the load really ran before the kill
    assert gone(writer)  # the writer process ended with its server, quietly
    assert "Traceback" not in first.log.read_text()
    started = time.monotonic()
    second = server()
    assert time.monotonic() - started < 10
    stored = stored_call_ids(second.url)
    assert answered <= set(stored)  # every event answered 2xx is there
    assert len(stored) == len(set(stored))  # and exactly once
    second.stop()
    with sqlite3.connect(db_path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sigterm_drains_and_commits_in_flight_requests(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = server("--log-level", "info")
    stops: list[tuple[int, str]] = []
    answered = run_load_then(first.url, lambda: stops.append(first.stop(signal.SIGTERM)))
    code, logged = stops[0]
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in logged
    assert len(answered) > 50
    with sqlite3.connect(db_path) as check:
        rows = {row[0] for row in check.execute("SELECT call_id FROM events")}
    assert answered <= rows


def test_env_variables_configure_the_server(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECEIVER_TOKEN", "from-env")
    running = server()
    assert httpx.get(f"{running.url}/webhook?myid=1&{HANGUP}").status_code == 403
    assert httpx.get(f"{running.url}/webhook?myid=1&token=from-env&{HANGUP}").status_code == 200


def test_calls_are_made_in_the_background_when_ingest_is_quiet(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    running = server()
    for n in range(5):
        assert httpx.get(f"{running.url}/webhook?myid=7&{delivery(0, n)}").status_code == 200
    deadline = time.monotonic() + 10
    rebuilt = 0
    while time.monotonic() < deadline and rebuilt != 5:
        time.sleep(0.2)
        with sqlite3.connect(db_path) as check:  # read the table: no query refreshes it
            rebuilt = check.execute("SELECT count(*) FROM calls").fetchone()[0]
    assert rebuilt == 5


def test_a_database_from_before_version_6_is_upgraded_before_the_server_answers(
    server, db_path: Path
) -> None:  # type: ignore[no-untyped-def]
    queries = [f"myid=7&{delivery(0, n)}" for n in range(5)]
    raws = [RawRequest("GET", query.encode()) for query in queries]
    events = [parse_request(raw, received_at_us=1, source="t")[0] for raw in raws]
    stored_by_version(db_path, 5, events)
    running = server()  # once /healthz answers
    with sqlite3.connect(db_path) as check:
        sql = "SELECT count(*) FROM events WHERE length(dedup_key) = 16"
        assert check.execute(sql).fetchone()[0] == 0
    answer = httpx.get(f"{running.url}/webhook?{queries[3]}").json()
    assert (answer["id"], answer["duplicate"]) == (4, True)
    _, logged = running.stop()
    assert "WARNING receiver.store: upgrading the database" in logged
    assert "the de-dup keys of the 5 events stored before version 6" in logged


def test_calls_are_rebuilt_in_the_background_under_steady_traffic(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A delivery every 0.1 s: the receiver is never quiet, yet the calls table keeps up.
    running = server()
    rebuilt, sent = 0, 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (sent < 20 or rebuilt < 10):
        assert httpx.get(f"{running.url}/webhook?myid=7&{delivery(1, sent)}").status_code == 200
        sent += 1
        time.sleep(0.1)
        with sqlite3.connect(db_path) as check:  # read the table itself: no query refreshes it
            rebuilt = check.execute("SELECT count(*) FROM calls").fetchone()[0]
    assert rebuilt >= 10, (sent, rebuilt)


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 2 MB file system of its own (tmpfs; needs root, as CI has)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def deliver_until_refused(url: str, worker: int, refusals: int) -> tuple[set[str], list[object]]:
    """Unique deliveries until `refusals` of them are not 200: the CallIDs answered 200, and
    the refusals."""
    answered, refused = set(), []
    with httpx.Client(timeout=10) as client:
        for n in range(5000):
            payload = delivery(worker, n)
            response = client.get(f"{url}/webhook?myid=7&{payload}")
            if response.status_code == 200:
                answered.add(payload.split("CallID=")[1].split("&")[0])
            else:
                refused.append(response)
                if len(refused) >= refusals:
                    break
    return answered, refused


def test_full_disk_answers_503_keeps_what_it_answered_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    from tests.conftest import ServerProcess

    filler = small_disk / "filler"  # room that someone frees once the disk is full
    filler.write_bytes(b"x" * 512 * 1024)
    running = ServerProcess(small_disk / "receiver.db", log_dir=tmp_path).start()
    started = time.monotonic()
    try:
        before, refused = deliver_until_refused(running.url, 1, 3)
        assert [r.status_code for r in refused] == [503] * 3
        assert all(r.json()["ok"] is False and "full" in r.json()["error"] for r in refused)
        assert httpx.get(f"{running.url}/healthz").status_code == 200  # still up
        filler.unlink()
        # The WAL had taken the whole disk and, never checkpointed, kept what was freed: a few
        # deliveries filled it again. Now the freed 512 KB hold hundreds of events.
        after, refused_after = deliver_until_refused(running.url, 2, 50)
        assert len(after) > 300, len(after)
        assert [r.status_code for r in refused_after] == [503] * 50
    finally:
        _, logged = running.stop()
    assert len(before) > 20  # it stored events until the disk filled
    with sqlite3.connect(f"file:{small_disk / 'receiver.db'}?mode=ro", uri=True) as check:
        stored = {row[0] for row in check.execute("SELECT call_id FROM events")}
    assert before | after <= stored
    # 53 deliveries not stored: the first is logged with its request, the others counted.
    intervals = 1 + int(time.monotonic() - started) // 10
    assert 1 <= logged.count("event NOT stored") <= 1 + intervals
    assert "more like it in the last 10 s, not logged" in logged
    assert logged.count("Traceback") <= 2 * intervals  # the background work, failing too
    assert len(logged) < 16_000 * intervals, logged  # it was 560 bytes for each 503 alone


def writer_pid(running) -> int:  # type: ignore[no-untyped-def]
    """The pid of the server's writer process (its only child)."""
    pid = running.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # reaped, or being reaped as we read
            return True
        if state == "Z":  # ended; its parent (pytest, once the server is gone) has not reaped it
            return True
        time.sleep(0.05)
    return False


def test_a_killed_server_leaves_no_writer_process_behind(server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    writer = writer_pid(running)
    running.stop(signal.SIGKILL)
    assert gone(writer)  # its stdin closed with the server, and it ended


def test_a_killed_server_leaves_no_export_worker_behind(server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    assert httpx.get(f"{running.url}/webhook?myid=7&{delivery(2, 0)}").status_code == 200
    export = httpx.get(f"{running.url}/api/events?format=ndjson", timeout=30)
    assert export.status_code == 200 and export.text.count("\n") == 1
    pid = running.process.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(children) >= 3, children  # the writer, the export workers (and their tracker)
    running.stop(signal.SIGKILL)
    assert all(gone(child) for child in children)  # each sees its server gone, and ends


def test_a_dead_writer_process_is_replaced(server, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    running = server()
    assert httpx.get(f"{running.url}/webhook?myid=7&{delivery(2, 0)}").status_code == 200
    old = writer_pid(running)
    os.kill(old, signal.SIGKILL)
    assert gone(old)
    # Until the server has seen the writer end, a delivery can still go to it and get a 503.
    refused = []
    for n in range(1, 20):
        response = httpx.get(f"{running.url}/webhook?myid=7&{delivery(2, n)}")
        if response.status_code == 200:
            break
        refused.append(response)
        time.sleep(0.05)
    assert response.status_code == 200, response.text
    assert all(r.status_code == 503 and "writer process ended" in r.text for r in refused), [
        r.text for r in refused
    ]
    assert writer_pid(running) != old
    _, logged = running.stop()
    assert "the writer process ended (exit code -9); starting a new one" in logged
    with sqlite3.connect(db_path) as check:
        assert check.execute("SELECT count(*) FROM events").fetchone()[0] == 2
