"""Several processes on one database file: started together, each comes up and stores once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from receiver.event import RawRequest
from receiver.parse import parse_request
from receiver.store import SCHEMA_VERSION
from tests.conftest import ServerProcess, sample, stored_by_version

HANGUP = sample("outbound-hangup")
SERVERS = 3
REPLAYED = 200  # events in the replayed file
DELIVERED = 20  # events sent to each server
ROUNDS_FOR = 18.0  # seconds of rounds: each is a few seconds, so several of each kind run
LOCK_HELD = 3.0  # seconds the database is locked while the processes start, in half the rounds


def hangup(myid: str, n: int) -> str:
    """A real hangup made unique by its CallID."""
    return f"myid={myid}&" + HANGUP.replace("b5187f38a9cc43f2ba068bce983a513e", f"{n:032x}")


def old_events(count: int) -> list:  # type: ignore[type-arg]
    events = []
    for n in range(count):
        raw = RawRequest("GET", hangup("9", n).encode())
        events.append(parse_request(raw, received_at_us=1, source="t")[0])
    return events


def start_round(directory: Path, version: int | None, hold_lock: bool) -> int:
    """Start SERVERS servers and a replay on one file at the same moment, deliver to every
    server, stop them; returns how many events the file held before."""
    directory.mkdir()
    db = directory / "receiver.db"
    before = 0
    if version is not None:  # an old database: the processes upgrade it together
        before = 5
        stored_by_version(db, version, old_events(before))
    replayed = directory / "replayed.txt"
    replayed.write_text("".join(f"{hangup('8', n)}\n" for n in range(REPLAYED)))
    holder = sqlite3.connect(db, isolation_level=None) if hold_lock else None
    if holder is not None:
        # Another process writes while they start, as the old server does in a restart: they
        # all read the schema version (WAL lets them), wait for the write lock, then go together.
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
    servers = [ServerProcess(db, log_dir=directory).launch() for _ in range(SERVERS)]
    replay = subprocess.Popen(
        [sys.executable, "-m", "receiver", "replay", "--quiet", "--db", str(db), str(replayed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        if holder is not None:
            time.sleep(LOCK_HELD)
            holder.execute("ROLLBACK")
            holder.close()
        for running in servers:
            running.wait_ready()
        output = replay.communicate(timeout=60)[0].decode()
        assert replay.returncode == 0, output
        with httpx.Client(timeout=10) as client:
            for index, running in enumerate(servers):
                for n in range(DELIVERED):
                    answer = client.get(f"{running.url}/webhook?{hangup('7', index * 1000 + n)}")
                    assert answer.json() == {"ok": True, "id": answer.json()["id"],
                                             "duplicate": False}  # fmt: skip
            # One event sent to every server: stored by the first, a repeat for the others.
            shared = [client.get(f"{s.url}/webhook?{hangup('7', 999_999)}").json() for s in servers]
        assert [answer["duplicate"] for answer in shared] == [False] + [True] * (SERVERS - 1)
        assert len({answer["id"] for answer in shared}) == 1
    finally:
        replay.kill()
        replay.wait()
        for running in servers:
            running.stop(signal.SIGTERM)
    return before


@pytest.mark.slow
def test_servers_and_a_replay_started_together_all_come_up_and_store_each_event_once(
    tmp_path: Path,
) -> None:
    # Fresh files and old databases of every version, in turn; with the lock held or not.
    starts: list[int | None] = [None, *range(1, SCHEMA_VERSION)]
    rounds = 0
    deadline = time.monotonic() + ROUNDS_FOR
    while rounds < 4 or time.monotonic() < deadline:
        version = starts[(rounds // 2) % len(starts)]
        directory = tmp_path / f"round-{rounds}"
        before = start_round(directory, version, hold_lock=rounds % 2 == 0)
        with sqlite3.connect(directory / "receiver.db") as check:
            assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            counts = dict(check.execute("SELECT myid, count(*) FROM events GROUP BY myid"))
            shared = check.execute(
                "SELECT duplicates FROM events WHERE call_id = ?", (f"{999_999:032x}",)
            ).fetchall()
        assert counts == {
            "7": SERVERS * DELIVERED + 1,
            "8": REPLAYED,
            **({"9": before} if before else {}),
        }
        assert shared == [(SERVERS - 1,)]  # stored once, its repeats counted
        rounds += 1
