"""How fast the web pages render on a database of 1,000,000 events (~250k calls).

    python bench/pages.py [--events 1000000] [--keep DIR]

Fills the database as bench/query.py does (or reuses `DIR/query.db`), runs `receiver serve` on
it, and times, over HTTP, the dashboard of the busiest day, the first calls page of that day, the
calls page unfiltered, and, as the baseline of the same run, the JSON page of the same calls
from /api/calls: p50 and p95 (target: the pages under 200 ms p95).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, python, start
from query import fill

DAY_US = 86_400_000_000


def timed(client: httpx.Client, label: str, path: str, runs: int) -> None:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"{label:40} p50 {statistics.median(times):7.1f} ms  p95 {p95:7.1f} ms  ({runs} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="work in this folder; reuse its database")
    parser.add_argument("--runs", type=int, default=40)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = options.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "query.db"
        if not db.exists():
            asyncio.run(fill(db, options.events))
        with sqlite3.connect(db) as c:
            events = c.execute("SELECT count(*) FROM events").fetchone()[0]
            calls = c.execute("SELECT count(*) FROM calls").fetchone()[0]
            busiest = c.execute(
                f"SELECT started_us / {DAY_US} AS day FROM calls GROUP BY day "
                "ORDER BY count(*) DESC LIMIT 1"
            ).fetchone()[0]
        day = datetime.fromtimestamp(busiest * DAY_US / 1e6, UTC).date().isoformat()
        print(f"{events:,} events, {calls:,} calls; the busiest day {day}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [python(), "-m", "receiver", "serve", "--db", str(db), "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        server = start(command, f"{url}/healthz")
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                client.get(f"/?day={day}")  # templates compiled, caches warm
                runs = options.runs
                timed(client, f"/api/calls, 50 of {day} (baseline)",
                      f"/api/calls?since={day}&order=desc&limit=50", runs)  # fmt: skip
                timed(client, f"dashboard of {day} (target < 200 ms)", f"/?day={day}", runs)
                timed(client, "dashboard of today", "/", runs)
                timed(client, f"/calls of {day} (target < 200 ms)",
                      f"/calls?since={day}T00:00", runs)  # fmt: skip
                timed(client, "/calls, newest 50", "/calls", runs)
                timed(client, "/events, newest 50, with raw requests", "/events", runs)
                timed(client, "/missed, the last 7 days", "/missed", runs)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
