"""Query latency and export speed on a database of 1,000,000 events (~250k calls).

    python bench/query.py [--events 1000000] [--keep DIR]

Fills a database through the same parse and store path as live deliveries (the calls are
made by pbx_emulator/simulate.py, as pbx-events §4 says) and rebuilds the calls. Then prints p50
and p95 latency of: the events of one call; a page of 100 calls for one myid over a day; the
missed report for a week; and the throughput and the server's peak memory of a full NDJSON
export over HTTP, read by curl when it is installed (by httpx otherwise: on two cores a client
in Python takes CPU time the server needs), twice: with the file cache as the runs before left
it, then warm.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, python, start

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pbx_emulator.simulate import calls, make_offices, query_string  # noqa: E402
from receiver.event import RawRequest  # noqa: E402
from receiver.parse import parse_request  # noqa: E402
from receiver.store import CallQuery, EventQuery, Store  # noqa: E402

DAY_US = 86_400_000_000


async def fill(db: Path, events: int) -> tuple[list[str], list[str], int, int]:
    """Store `events` events; returns some call ids, the myids, and the first and last time."""
    call_ids: list[str] = []
    myids: set[str] = set()
    stored = 0
    first = last = 0
    async with Store(db) as store:
        chunk = []
        pending: list[asyncio.Future] = []  # type: ignore[type-arg]
        for call in calls(make_offices(40, 11), seed=11, start_us=1_764_572_400_000_000):
            for myid, fields in call.events:
                raw = RawRequest("GET", f"myid={myid}&{query_string(fields)}".encode())
                event, _ = parse_request(
                    raw, received_at_us=int(fields["EventTime"]), source="bench"
                )
                chunk.append(event)
                myids.add(str(myid))
                last = int(fields["EventTime"])
                first = first or last
            if len(call_ids) < 5000:
                call_ids.append(call.truth["call_id"])
            if len(chunk) >= 500:
                await asyncio.gather(*pending)
                pending, chunk = store.submit_events(chunk), []
                stored += 500
                if stored % 100_000 < 500:
                    print(f"  {stored:,} events stored", flush=True)
            if stored + len(chunk) >= events:
                break
        await asyncio.gather(*pending, *store.submit_events(chunk))
        started = time.perf_counter()
        rebuilt = await store.refresh_calls()
        print(f"  {rebuilt:,} calls rebuilt in {time.perf_counter() - started:.0f} s", flush=True)
    return call_ids, sorted(myids), first, last


async def timed(label: str, runs: int, work) -> None:  # type: ignore[no-untyped-def]
    times = []
    for n in range(runs):
        started = time.perf_counter()
        await work(n)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"{label:44} p50 {statistics.median(times):8.2f} ms  p95 {p95:8.2f} ms  ({runs} runs)")


async def latencies(db: Path, call_ids: list[str], myids: list[str], first: int, last: int) -> None:
    rng = random.Random(5)
    now = last + 3600 * 1_000_000
    async with Store(db) as store:

        async def one_call(_: int) -> None:
            page = await store.list_events(EventQuery(call_id=rng.choice(call_ids)), limit=1000)
            assert page.items

        async def calls_page(_: int) -> None:
            day = first + rng.randrange(max(1, (last - first) // DAY_US)) * DAY_US
            query = CallQuery(myids=(rng.choice(myids),), since_us=day, until_us=day + DAY_US,
                              now_us=now)  # fmt: skip
            await store.list_calls(query, limit=100)

        async def missed_week(_: int) -> None:
            await store.missed_report(CallQuery(since_us=first, until_us=first + 7 * DAY_US,
                                                now_us=now))  # fmt: skip

        await timed("events of one call (target p95 < 5 ms)", 500, one_call)
        await timed("100 calls of one myid over a day (< 50 ms)", 200, calls_page)
        await timed("missed report for a week (< 500 ms)", 10, missed_week)


def read_export(url: str) -> tuple[str, int]:
    """Read a whole NDJSON export; the client used and the lines read."""
    count = 0
    if shutil.which("curl"):  # a client in C: on two cores, a Python one takes the server's
        with subprocess.Popen(["curl", "-sSf", url], stdout=subprocess.PIPE) as curl:
            assert curl.stdout is not None
            while chunk := curl.stdout.read(1 << 20):
                count += chunk.count(b"\n")
        assert curl.returncode == 0, curl.returncode
        return "curl", count
    with httpx.stream("GET", url, timeout=600) as response:
        for chunk in response.iter_raw():
            count += chunk.count(b"\n")
    return "httpx", count


def export(db: Path, events: int) -> None:
    """Twice: first with the file cache as the runs before left it, then with it warm."""
    port = free_port()
    command = [python(), "-m", "receiver", "serve", "--db", str(db), "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    process = start(command, f"http://127.0.0.1:{port}/healthz")
    try:
        for cache in ("as it was", "warm"):
            started = time.perf_counter()
            client, count = read_export(f"http://127.0.0.1:{port}/api/events?format=ndjson")
            seconds = time.perf_counter() - started
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:"))
            print(
                f"full NDJSON export ({client}, file cache {cache}): {count:,} events in "
                f"{seconds:.1f} s = {count / seconds:,.0f} events/s (target >= 150,000), "
                f"server peak RSS {peak / 1024:.0f} MB (< 200 MB)"
            )
            assert count == events, (count, events)
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="work in this folder; reuse its database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "query.db"
        started = time.perf_counter()
        if db.exists():
            print(f"reusing {db}")
            import sqlite3

            with sqlite3.connect(db) as c:
                call_ids = [r[0] for r in c.execute("SELECT call_id FROM calls LIMIT 5000")]
                myids = [r[0] for r in c.execute("SELECT DISTINCT myid FROM calls")]
                first, last = c.execute(
                    "SELECT min(started_us), max(started_us) FROM calls"
                ).fetchone()
        else:
            call_ids, myids, first, last = asyncio.run(fill(db, args.events))
            print(f"filled in {time.perf_counter() - started:.0f} s")
        with __import__("sqlite3").connect(db) as c:
            total = c.execute("SELECT count(*) FROM events").fetchone()[0]
            ncalls = c.execute("SELECT count(*) FROM calls").fetchone()[0]
        days = (last - first) / DAY_US
        print(f"{total:,} events, {ncalls:,} calls, {len(myids)} myids, over {days:.1f} days")
        asyncio.run(latencies(db, call_ids, myids, first, last))
        export(db, total)


if __name__ == "__main__":
    main()
