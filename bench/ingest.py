"""Ingest throughput: receiver against a bare endpoint and a naive one, side by side in one run.

    python bench/ingest.py [--seconds 10] [--connections 32] [--rounds 3] [--memory-events 200000]

Needs wrk (Debian: apt-get install wrk). Each server runs as its own process on a free local port;
wrk sends real hangup deliveries with unique CallIDs and rising EventTimes, by GET and by POST.
The three servers take turns, --rounds times (this machine is shared and noisy); prints each
run's requests/s and p50/p99 latency, then the ratios of the medians, then the receiver's RSS
(its server and writer processes together) after --memory-events events.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, children, free_port, python, rss_mb, start

HERE = Path(__file__).resolve().parent
SAMPLE = ROOT / "tests" / "samples" / "outbound-hangup.txt"


def server_command(kind: str, port: int, db: Path) -> list[str]:
    if kind == "receiver":
        return [python(), "-m", "receiver", "serve", "--port", str(port), "--db", str(db),
                "--log-level", "warning"]  # fmt: skip
    return [python(), str(HERE / "apps.py"), kind, str(port), str(db)]


RUNS = itertools.count(1)
DATABASES = itertools.count(1)


def wrk(port: int, method: str, seconds: float, connections: int) -> dict[str, float]:
    payload = (
        SAMPLE.read_text()
        .strip()
        .replace("b5187f38a9cc43f2ba068bce983a513e", "CALLID")
        .replace("EventTime=1502985750238219", "EventTime=EVENTTIME")
    )
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s",
         "-s", str(HERE / "ingest.lua"), f"http://127.0.0.1:{port}"],
        env={**os.environ, "METHOD": method, "PAYLOAD": payload, "RUN": str(next(RUNS))},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    stats = json.loads(line.removeprefix("RESULT "))
    stats["rps"] = stats["requests"] / stats["seconds"]
    return stats


def stored(db: Path, kind: str) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM events").fetchone()[0]


def measure(kind: str, method: str, seconds: float, connections: int, work: Path) -> dict:
    db = work / f"{kind}-{method}-{next(DATABASES)}.db"  # a fresh one for every run
    port = free_port()
    process = start(server_command(kind, port, db), f"http://127.0.0.1:{port}/webhook")
    try:
        wrk(port, method, 1, connections)  # warm up
        stats = wrk(port, method, seconds, connections)
    finally:
        process.terminate()
        process.wait()
    if kind != "bare":
        stats["stored"] = stored(db, kind)
    return stats


def median_run(runs: list[dict]) -> dict:
    """Requests/s and p99 latency: the median of each over the runs of one server."""
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
    }


def memory(events: int, connections: int, work: Path) -> tuple[int, str]:
    db = work / "memory.db"
    port = free_port()
    process = start(server_command("receiver", port, db), f"http://127.0.0.1:{port}/healthz")
    try:
        sent = 0
        while sent < events:
            sent += int(wrk(port, "POST" if sent % 2 else "GET", 15, connections)["requests"])
            print(f"  memory run: {sent} events sent, RSS {memory_text(process.pid)}", flush=True)
        rss = memory_text(process.pid)
    finally:
        process.terminate()
        process.wait()
    return stored(db, "receiver"), rss


def memory_text(pid: int) -> str:
    """The RSS of the server and of its writer process, and their sum."""
    server, writer = rss_mb(pid), sum(rss_mb(child) for child in children(pid))
    return f"{server + writer:.1f} MB (server {server:.1f} MB + writer {writer:.1f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of each timed run")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each server, taking turns; medians compared")  # fmt: skip
    parser.add_argument("--memory-events", type=int, default=200_000,
                        help="events to send before reading RSS (0 skips)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"{os.cpu_count()} cores; {args.connections} connections; {args.seconds:g} s a run")
        for method in ("GET", "POST"):
            runs: dict[str, list[dict]] = {"bare": [], "naive": [], "receiver": []}
            for _ in range(args.rounds):  # interleaved, so a slow spell hits every kind alike
                for kind, kept in runs.items():
                    kept.append(measure(kind, method, args.seconds, args.connections, work))
                    r = kept[-1]
                    print(
                        f"{method:4} {kind:8} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                        f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non2xx']}  "
                        f"errors {r['socket_errors']}  stored {r.get('stored', '-')}",
                        flush=True,
                    )
            results = {kind: median_run(kept) for kind, kept in runs.items()}
            for kind, r in results.items():
                print(f"{method:4} {kind:8} median of {args.rounds}: {r['rps']:8.0f} req/s  "
                      f"p99 {r['p99_ms']:6.2f} ms")  # fmt: skip
            bare, naive, ours = results["bare"], results["naive"], results["receiver"]
            print(f"{method:4} receiver/bare throughput {ours['rps'] / bare['rps']:.2f}x (target "
                  f">= 0.85), p99 {ours['p99_ms'] / bare['p99_ms']:.2f}x (target <= 2), "
                  f"receiver/naive throughput {ours['rps'] / naive['rps']:.2f}x")  # fmt: skip
            for r in runs["receiver"]:
                if r["non2xx"] or r["stored"] < r["requests"]:  # the warm-up adds some more
                    print(f"{method:4} WARNING: not every request was stored with a 2xx")
        if args.memory_events:
            count, rss = memory(args.memory_events, args.connections, work)
            print(f"memory: RSS {rss} after {count} stored events (target < 150 MB)")


if __name__ == "__main__":
    main()
