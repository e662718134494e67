"""Backups and prunes of a live database, beside a real server taking deliveries; silence."""

from __future__ import annotations

import datetime
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.silence import Watch
from receiver.store import backup
from tests.conftest import ServerProcess
from tests.test_metrics import live, scrape

DAY_US = 86_400_000_000


class Load:
    """Threads sending unique live deliveries until stopped, each `pause` seconds after its
    last answer (a busy PBX rather than a flood); each answered 200 is noted with the moment
    its answer came."""

    def __init__(self, url: str, workers: int = 4, first: int = 0, pause: float = 0.005) -> None:
        self.url = url
        self.pause = pause
        self.answered: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.work, args=(first + w * 10**7,)) for w in range(workers)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def work(self, first: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            n = first
            while not self.stop.is_set():
                n += 1
                answer = client.get(f"/webhook?myid=7&{live(n)}")
                if answer.status_code == 200:
                    with self.lock:
                        self.answered.append((time.monotonic(), f"{n:032x}"))
                time.sleep(self.pause)

    def before(self, moment: float) -> set[str]:
        with self.lock:
            return {call_id for at, call_id in self.answered if at < moment}

    def count(self) -> int:
        with self.lock:
            return len(self.answered)


def receiver(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "receiver", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def call_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute("SELECT call_id FROM events")]


def fill(db: Path, count: int, at_us: int, first: int = 0) -> None:
    """`count` events at `at_us`, received then, stored by `receiver replay` from an access
    log of that day; their calls built."""
    day = datetime.datetime.fromtimestamp(at_us / 1e6, datetime.UTC).strftime(
        "%d/%b/%Y:%H:%M:%S +0000"
    )
    log = db.with_suffix(".log")
    log.write_text(
        "".join(
            f'10.0.0.1 - - [{day}] "GET /webhook?myid=7&{live(first + n, at_us=at_us)} '
            f'HTTP/1.1" 200 40 "-" "PBX"\n'
            for n in range(count)
        )
    )
    done = receiver("replay", "--db", str(db), "--quiet", str(log))
    assert done.returncode == 0, done.stderr
    log.unlink()


@pytest.mark.slow
def test_a_backup_under_load_holds_every_event_answered_before_it(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    fill(db, 2000, time.time_ns() // 1000 - DAY_US, first=10**9)  # something to copy
    running = ServerProcess(db).start()
    copy = tmp_path / "backup.db"
    try:
        with Load(running.url) as load:
            while load.count() < 200:
                time.sleep(0.01)
            began = time.monotonic()
            answered_before = load.before(began)
            backed_up = receiver("backup", "--db", str(db), str(copy))
            answered_during = load.count() - len(load.before(began))
        assert backed_up.returncode == 0, backed_up.stderr
        assert "integrity check: ok" in backed_up.stdout
        assert answered_during > 0  # deliveries went on while it copied
    finally:
        running.stop()
    with sqlite3.connect(copy) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert not copy.with_name("backup.db.part").exists()
    in_copy = call_ids(copy)
    assert len(in_copy) == len(set(in_copy))
    assert answered_before <= set(in_copy)
    assert len(in_copy) >= 2000 + len(answered_before)
    # Restoring, as docs/deploy.md says: the copy in place of the database, the server started.
    restored = tmp_path / "restored" / "receiver.db"
    restored.parent.mkdir()
    shutil.copyfile(copy, restored)
    again = ServerProcess(restored).start()
    try:
        assert httpx.get(f"{again.url}/readyz").status_code == 200
        events = httpx.get(f"{again.url}/api/events", params={"format": "ndjson"}).text
        assert events.count("\n") == len(in_copy)
        assert httpx.get(f"{again.url}/webhook?myid=7&{live(1)}").status_code == 200
    finally:
        again.stop()
    with sqlite3.connect(restored) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_backup_is_written_at_its_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup, "FLUSH_EVERY_BYTES", 256 * 1024)  # flushed a few times too
    db = tmp_path / "r.db"
    fill(db, 3000, time.time_ns() // 1000)
    size = db.stat().st_size
    assert size > 4 * backup.BACKUP_PAGES_AT_ONCE * 4096  # pages enough for a few steps
    rate = size / 1.0  # about a second's worth
    began = time.monotonic()
    paced = backup.backup_file(db, tmp_path / "paced.db", rate=rate)
    took = time.monotonic() - began
    unpaced = backup.backup_file(db, tmp_path / "unpaced.db", rate=None)
    assert paced.integrity == unpaced.integrity == "ok"
    assert paced.events == unpaced.events == 3000
    assert (tmp_path / "paced.db").read_bytes() == (tmp_path / "unpaced.db").read_bytes()
    copied = paced.bytes - 4096  # the last page's wait is not needed: it is done
    assert took >= copied / rate * 0.95  # never faster than its rate (sleeps are no shorter)
    result = CliRunner().invoke(main, ["backup", "--max-rate", "-1", str(tmp_path / "x.db")])
    assert result.exit_code == 2 and "-1" in result.output


def test_a_backup_never_overwrites(tmp_path: Path) -> None:
    db, copy = tmp_path / "r.db", tmp_path / "copy.db"
    fill(db, 3, time.time_ns() // 1000)
    copy.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["backup", "--db", str(db), str(copy)])
    assert result.exit_code == 1
    assert "exists already: give a new file, or remove it first" in result.output
    assert copy.read_bytes() == b"precious"
    result = CliRunner().invoke(main, ["backup", "--db", str(db), str(tmp_path / "no" / "x.db")])
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.slow
def test_prune_under_load_removes_exactly_the_old_and_loses_nothing_new(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    now_us = time.time_ns() // 1000
    fill(db, 1200, now_us - 500 * DAY_US, first=10**9)  # old: to go (in 3 batches)
    fill(db, 200, now_us - 100 * DAY_US, first=2 * 10**9)  # younger than the cut: to stay
    running = ServerProcess(db).start()
    try:
        dry = receiver("prune", "--db", str(db), "--older-than", "400d", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would delete 1,200 events from before" in dry.stdout
        assert "and 1,200 calls" in dry.stdout
        assert len(call_ids(db)) == 1400
        with Load(running.url) as load:
            while load.count() < 100:
                time.sleep(0.01)
            started = load.count()
            pruned = receiver("prune", "--db", str(db), "--older-than", "400d")
            during = load.count() - started
        assert pruned.returncode == 0, pruned.stderr
        assert "deleted 1,200 events from before" in pruned.stdout
        assert "and 1,200 calls" in pruned.stdout and "MB given back" in pruned.stdout
        assert during > 0  # deliveries went on while it pruned
        answered = load.before(time.monotonic())
        figures = scrape(running.url)
    finally:
        running.stop()
    left = call_ids(db)
    assert len(left) == len(set(left))
    assert set(left) == {f"{2 * 10**9 + n:032x}" for n in range(200)} | answered
    assert figures[("receiver_deliveries_total", (("outcome", "stored"),))] == len(answered)
    given_back = re.search(r"; ([\d.]+) MB given back", pruned.stdout)
    assert given_back and float(given_back[1]) > 0.5, pruned.stdout  # 1,200 events: 2 MB
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA freelist_count").fetchone()[0] < 256
        assert connection.execute("SELECT count(*) FROM calls").fetchone()[0] >= 200
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.slow
def test_retention_prunes_in_the_server(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    fill(db, 50, time.time_ns() // 1000 - 30 * DAY_US)
    running = ServerProcess(db, "--retention", "7d").start()
    try:
        deadline = time.monotonic() + 20
        while (health := httpx.get(f"{running.url}/healthz").json())["retention"][
            "last_finished_at"
        ] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health["retention"]["last_removed_events"] == 50
        assert health["retention"]["older_than_seconds"] == 7 * 86400
        assert httpx.get(f"{running.url}/webhook?myid=7&{live(1)}").status_code == 200
    finally:
        _, log = running.stop()
    assert call_ids(db) == [f"{1:032x}"]
    assert "Traceback" not in log


def test_prune_refuses_a_duration_that_is_not_one() -> None:
    result = CliRunner().invoke(main, ["prune", "--older-than", "a year"])
    assert result.exit_code == 2
    assert "'a year' is not a duration" in result.output


def test_the_watch_says_who_went_quiet_and_who_came_back() -> None:
    watch = Watch(1800)
    minute = 60_000_000
    assert watch.update({"a": 0, "b": 0}, 10 * minute) == []
    went = watch.update({"a": 0, "b": 25 * minute}, 31 * minute)
    assert [(c.myid, c.quiet, c.for_us) for c in went] == [("a", True, 31 * minute)]
    assert watch.update({"a": 0, "b": 25 * minute}, 40 * minute) == []  # said once
    back = watch.update({"a": 50 * minute, "b": 25 * minute}, 51 * minute)
    assert [(c.myid, c.quiet, c.for_us) for c in back] == [("a", False, 50 * minute)]
    gone = watch.update({"b": 25 * minute}, 60 * minute)  # a pruned away; b quiet now
    assert [(c.myid, c.quiet) for c in gone] == [("b", True)]
    assert set(watch.quiet) == {"b"}


@pytest.mark.slow
def test_a_myid_that_goes_quiet_is_reported_and_again_when_it_comes_back(
    tmp_path: Path,
) -> None:
    running = ServerProcess(tmp_path / "r.db", "--silence-after", "2s").start()
    try:
        with httpx.Client(base_url=running.url) as client:
            assert client.get(f"/webhook?myid=175&{live(1)}").status_code == 200
            assert client.get(f"/webhook?myid=176&{live(2)}").status_code == 200
            assert client.get("/healthz").json()["silent"] == []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # 176 keeps sending, 175 does not
                assert client.get(f"/webhook?myid=176&{live(int(time.time() * 1e6))}").is_success
                silent = client.get("/healthz").json()["silent"]
                if silent:
                    break
                time.sleep(0.2)
            assert [s["myid"] for s in silent] == ["175"]
            assert silent[0]["silent_seconds"] >= 2
            figures = scrape(running.url)
            assert figures[("receiver_silent", (("myid", "175"),))] == 1
            assert figures[("receiver_silent", (("myid", "176"),))] == 0
            assert figures[("receiver_silent_myids", ())] == 1
            assert client.get(f"/webhook?myid=175&{live(3)}").status_code == 200
            deadline = time.monotonic() + 10
            while client.get("/healthz").json()["silent"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        _, log = running.stop()
    assert "myid 175 is silent: no event for" in log
    assert "myid 175 sends again, after" in log
    assert "myid 176 is silent" not in log
