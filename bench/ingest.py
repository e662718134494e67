"""Ingest throughput: receiver against a bare endpoint and a naive one, side by side in one run.

    python bench/ingest.py [--seconds 10] [--connections 32] [--rounds 3] [--memory-events 200000]
    python bench/ingest.py --backend postgresql [--postgresql-url URL] [--seconds 10] [--rounds 3]

Needs wrk (Debian: apt-get install wrk). Each server runs as its own process on a free local port;
wrk sends real hangup deliveries with unique CallIDs and rising EventTimes, by GET and by POST.
The three servers take turns, --rounds times (this machine is shared and noisy); prints each
run's requests/s and p50/p99 latency, then the ratios of the medians, then the receiver's RSS
(its server and writer processes together) after --memory-events events.

With --backend postgresql it compares the backends instead, taking turns the same way: the
receiver on SQLite, one receiver on a new PostgreSQL database (on the server --postgresql-url
names; RECEIVER_BENCH_POSTGRESQL, or the local one, by default), and two receivers on one new
database, each with its own wrk and half the connections (their requests/s added, the worse
p99 of the two). Prints the ratios to SQLite (target: one PostgreSQL instance at least 0.7x the
requests/s, p99 at most 2x) and checks that every request answered was stored.
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
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common import ROOT, children, free_port, python, rss_mb, start

HERE = Path(__file__).resolve().parent
SAMPLE = ROOT / "tests" / "samples" / "outbound-hangup.txt"


def server_command(kind: str, port: int, db: Path) -> list[str]:
    if kind == "receiver":
        return [python(), "-m", "receiver", "serve", "--port", str(port), "--db", str(db),
                "--log-level", "warning"]  # fmt: skip
    return [python(), str(HERE / "apps.py"), kind, str(port), str(db)]


POSTGRESQL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
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


def postgresql_database(server_url: str) -> str:
    """A new database on the server; its URL."""
    import psycopg

    name = f"receiver_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def drop_postgresql_database(server_url: str, url: str) -> int:
    """Drop a database postgresql_database() made; the events it held."""
    import psycopg

    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM events").fetchone()
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{urlsplit(url).path[1:]}" WITH (FORCE)')
    return int(row[0]) if row else 0


def measure_backend(kind: str, method: str, args: argparse.Namespace, work: Path) -> dict:
    """One timed run of `kind`: sqlite, postgresql-1 or postgresql-2 (instances)."""
    instances = 2 if kind == "postgresql-2" else 1
    if kind == "sqlite":
        db = str(work / f"sqlite-{method}-{next(DATABASES)}.db")
    else:
        db = postgresql_database(args.postgresql_url)
    ports = [free_port() for _ in range(instances)]
    processes = []
    try:
        for port in ports:
            processes.append(start(server_command("receiver", port, db),
                                   f"http://127.0.0.1:{port}/webhook"))  # fmt: skip
        share = max(1, args.connections // instances)
        for port in ports:
            wrk(port, method, 1, share)  # warm up
        results: list[dict] = [{} for _ in ports]

        def run(index: int) -> None:
            results[index] = wrk(ports[index], method, args.seconds, share)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(instances)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    stats = {
        "requests": sum(r["requests"] for r in results),
        "rps": sum(r["rps"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "non2xx": sum(r["non2xx"] for r in results),
        "socket_errors": sum(r["socket_errors"] for r in results),
    }
    if kind == "sqlite":
        stats["stored"] = stored(Path(db), kind)
    else:
        stats["stored"] = drop_postgresql_database(args.postgresql_url, db)
    return stats


def compare_backends(args: argparse.Namespace, work: Path) -> None:
    """SQLite, one PostgreSQL instance and two, taking turns; the medians' ratios."""
    kinds = ("sqlite", "postgresql-1", "postgresql-2")
    for method in ("GET", "POST"):
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind, kept in runs.items():
                kept.append(measure_backend(kind, method, args, work))
                r = kept[-1]
                print(
                    f"{method:4} {kind:12} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                    f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non2xx']}  "
                    f"errors {r['socket_errors']}  stored {r['stored']}",
                    flush=True,
                )
                if r["non2xx"] or r["stored"] < r["requests"]:  # the warm-up adds some more
                    print(f"{method:4} WARNING: not every request was stored with a 2xx")
        results = {kind: median_run(kept) for kind, kept in runs.items()}
        for kind, r in results.items():
            print(f"{method:4} {kind:12} median of {args.rounds}: {r['rps']:8.0f} req/s  "
                  f"p99 {r['p99_ms']:6.2f} ms")  # fmt: skip
        base = results["sqlite"]
        for kind in kinds[1:]:
            r = results[kind]
            target = " (target >= 0.7, p99 <= 2)" if kind == "postgresql-1" else ""
            print(f"{method:4} {kind}/sqlite throughput {r['rps'] / base['rps']:.2f}x, "
                  f"p99 {r['p99_ms'] / base['p99_ms']:.2f}x{target}")  # fmt: skip


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
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: SQLite against one and two PostgreSQL instances",
    )
    parser.add_argument(
        "--postgresql-url",
        default=os.environ.get("RECEIVER_BENCH_POSTGRESQL", POSTGRESQL_SERVER),
        help="the PostgreSQL server to make the databases on (a user who may create them)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"{os.cpu_count()} cores; {args.connections} connections; {args.seconds:g} s a run")
        if args.backend == "postgresql":
            compare_backends(args, work)
            return
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
