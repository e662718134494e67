"""What operations cost ingest: the metrics, and a backup taken while deliveries arrive.

    python bench/operations.py [--seconds 10] [--rounds 3] [--connections 32] [--events 1000000]

Needs wrk (Debian: apt-get install wrk); the deliveries are bench/ingest.py's.

1. Metrics: the receiver as it is, scraped once a second (Prometheus scrapes every 15 s by
   default), against the same receiver with the counting of each delivery and each commit made
   a no-op and never scraped; the two take turns, --rounds times, and the medians' ratio is
   printed (target: at least 0.95).
2. Backup: a database of --events events (made by bench/query.py's fill, the calls built),
   served by the receiver; `receiver backup` copies it while wrk runs, in slices of 2 s, until
   the backup (copy, integrity check, rename) is done; then wrk runs alone as long. --rounds
   times. Prints the ratio of the medians (target: at least 0.8) and how long a backup took.
   --keep DIR backs up DIR/query.db when it exists (bench/query.py --keep DIR fills one); the
   deliveries stored meanwhile stay in it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import free_port, python, start
from ingest import wrk
from query import fill

# The receiver with the per-delivery and per-commit counting made no-ops.
UNCOUNTED = (
    "import sys; import receiver.web.metrics as m; "
    "m.Metrics.answered = m.Metrics.refused = m.Metrics.committed = lambda *a: None; "
    "from receiver.cli import main; main(sys.argv[1:])"
)


def serve(db: Path, port: int, *, counted: bool = True) -> subprocess.Popen[bytes]:
    launcher = ["-m", "receiver"] if counted else ["-c", UNCOUNTED]
    command = [python(), *launcher, "serve", "--port", str(port), "--db", str(db),
               "--log-level", "warning"]  # fmt: skip
    return start(command, f"http://127.0.0.1:{port}/healthz")


class Repeating:
    """Run `work` over and over on a thread until stopped; the seconds each run took."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self.stop = threading.Event()
        self.took: list[float] = []
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            self.work()
            self.took.append(time.monotonic() - began)

    def __enter__(self) -> Repeating:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def metrics_cost(args: argparse.Namespace, work: Path) -> None:
    runs: dict[str, list[float]] = {"uncounted": [], "metrics": []}
    for round_ in range(args.rounds):
        for kind in runs:
            db = work / f"{kind}-{round_}.db"
            port = free_port()
            process = serve(db, port, counted=kind == "metrics")
            try:
                wrk(port, "GET", 1, args.connections)  # warm up
                if kind == "metrics":

                    def scrape(port: int = port) -> None:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as page:
                            page.read()
                        time.sleep(1)

                    with Repeating(scrape):
                        stats = wrk(port, "GET", args.seconds, args.connections)
                else:
                    stats = wrk(port, "GET", args.seconds, args.connections)
            finally:
                process.terminate()
                process.wait()
            runs[kind].append(stats["rps"])
            print(f"metrics: {kind:9} {stats['rps']:8.0f} req/s  p99 {stats['p99_ms']:6.2f} ms",
                  flush=True)  # fmt: skip
    with_, without = statistics.median(runs["metrics"]), statistics.median(runs["uncounted"])
    print(f"metrics: median {with_:.0f} req/s with, {without:.0f} without: "
          f"{with_ / without:.3f}x (target >= 0.95)", flush=True)  # fmt: skip


def slices(port: int, seconds: float, connections: int, until: Callable[[], bool]) -> dict:
    """wrk in slices of `seconds` until `until()` says stop; the requests a second over them
    all but the last (which runs on past the end, without what it measures beside it), and the
    worst slice's p99."""
    taken: list[dict[str, float]] = []
    while True:
        taken.append(wrk(port, "GET", seconds, connections))
        if until():
            break
    kept = taken[:-1] or taken
    requests = sum(stats["requests"] for stats in kept)
    took = sum(stats["seconds"] for stats in kept)
    return {"rps": requests / took, "p99_ms": max(s["p99_ms"] for s in kept), "seconds": took}


def backup_cost(args: argparse.Namespace, work: Path) -> None:
    db = work / "big.db"
    if args.keep is not None and (args.keep / "query.db").exists():
        db = args.keep / "query.db"  # a database bench/query.py or bench/pages.py filled
    else:
        print(f"backup: filling {args.events:,} events", flush=True)
        asyncio.run(fill(db, args.events))
    size = db.stat().st_size
    port = free_port()
    process = serve(db, port)
    runs: dict[str, list[float]] = {"alone": [], "backup": []}
    took: list[float] = []
    try:
        wrk(port, "GET", 1, args.connections)
        for round_ in range(args.rounds):
            copy = work / f"copy-{round_}.db"
            began = time.monotonic()
            backing_up = subprocess.Popen(
                [python(), "-m", "receiver", "backup", "--quiet", "--db", str(db), str(copy),
                 *args.backup_options.split()],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            beside = slices(port, 2, args.connections, lambda b=backing_up: b.poll() is not None)
            output = backing_up.communicate()[0].decode()
            assert backing_up.returncode == 0, output
            took.append(time.monotonic() - began)
            copy.unlink()
            alone = wrk(port, "GET", beside["seconds"], args.connections)
            for kind, stats in (("backup", beside), ("alone", alone)):
                runs[kind].append(stats["rps"])
                print(f"backup: {kind:6} {stats['rps']:8.0f} req/s  p99 {stats['p99_ms']:6.2f} "
                      f"ms  over {stats['seconds']:.0f} s", flush=True)  # fmt: skip
    finally:
        process.terminate()
        process.wait()
    alone_median = statistics.median(runs["alone"])
    beside_median = statistics.median(runs["backup"])
    print(f"backup: a {size / 1e6:,.0f} MB database copied in {statistics.median(took):.1f} s "
          f"(median, `receiver backup {args.backup_options}`); ingest {beside_median:.0f} req/s "
          f"over the whole backup, {alone_median:.0f} alone just after: "
          f"{beside_median / alone_median:.2f}x (target >= 0.8)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of each timed run")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each kind of run")
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events in the backed-up database (0: no backup part)")  # fmt: skip
    parser.add_argument("--skip-metrics", action="store_true", help="only the backup part")
    parser.add_argument("--backup-options", default="",
                        help="options for receiver backup, e.g. '--max-rate 0'")  # fmt: skip
    parser.add_argument(
        "--keep", type=Path, help="back up DIR/query.db if it exists (bench/query.py --keep DIR)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_metrics:
            metrics_cost(args, Path(tmp))
        if args.events:
            backup_cost(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
