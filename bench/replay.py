"""Replay speed: `receiver replay` of a 1,000,000-line access log against a stdlib baseline.

    python bench/replay.py [--lines 1000000] [--keep DIR]

Generates a combined-format access log: deliveries of ~250k calls made as pbx-events §4 says
(pbx_emulator/simulate.py), among non-event noise lines. Then, each as its own process, on a fresh
database: the baseline (the same lines parsed with the standard library and inserted with one
executemany into a table of the same columns) and `receiver replay`. Prints both times, the
ratio (target <= 2x), each one's peak memory (target < 200 MB), and the bytes per event of the
database the replay made, with the calls it builds before it ends (file and WAL after a
checkpoint, target <= 1,200), with what each table and index takes of it, and its share.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pbx_emulator.simulate import calls, make_offices, query_string  # noqa: E402
from receiver.store import MIGRATIONS  # noqa: E402

NOISE = [
    '"GET /robots.txt HTTP/1.1" 404 162 "-" "Mozilla/5.0 (compatible; Googlebot/2.1)"',
    '"GET /healthz HTTP/1.1" 200 48 "-" "kube-probe/1.29"',
    '"GET /static/app.js HTTP/1.1" 200 51234 "https://crm.example.com/" "Mozilla/5.0"',
    '"POST /api/login HTTP/1.1" 401 31 "-" "python-requests/2.32"',
    '"GET /wp-login.php HTTP/1.1" 404 162 "-" "Mozilla/5.0 zgrab/0.x"',
]


def log_time(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def generate(path: Path, lines: int, seed: int = 7) -> int:
    """Write the access log; returns how many lines are event deliveries."""
    written = events = 0
    with path.open("w") as out:
        for call in calls(make_offices(40, seed), seed=seed, start_us=1_764_572_400_000_000):
            for myid, fields in call.events:
                when = log_time(int(fields["EventTime"]))
                out.write(
                    f'185.45.152.{myid % 256} - - [{when}] "GET /webhook?myid={myid}&'
                    f'{query_string(fields)} HTTP/1.1" 200 38 "-" "Telphin-Events"\n'
                )
                written += 1
                events += 1
                if written % 19 == 0:  # ~5% noise
                    out.write(f"203.0.113.9 - - [{when}] {NOISE[written % len(NOISE)]}\n")
                    written += 1
            if written >= lines:
                return events
    return events


COMBINED = re.compile(
    r'(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\S+)(?: "[^"]*" "[^"]*")?'
)
COLUMNS = {
    "EventType": "event_type",
    "EventTime": "event_time_us",
    "CallID": "call_id",
    "SubCallID": "sub_call_id",
    "CallAPIID": "call_api_id",
    "CallBackID": "callback_id",
    "CallerIDNum": "caller_id_num",
    "CallerIDName": "caller_id_name",
    "CalledDID": "called_did",
    "CalledNumber": "called_number",
    "CallerExtension": "caller_extension",
    "CallerExtensionID": "caller_extension_id",
    "CalledExtension": "called_extension",
    "CalledExtensionID": "called_extension_id",
    "CallStatus": "call_status",
    "CallFlow": "call_flow",
    "Duration": "duration_us",
    "RecID": "rec_id",
    "Transfered": "transferred",
    "Bridged": "bridged",
    "Diversion": "diversion",
    "RemoteNumber": "remote_number",
}
INTEGERS = {"event_time_us", "caller_extension_id", "called_extension_id", "duration_us"}


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> int:
    return int(datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()) * 1_000_000


def baseline_rows(path: Path):  # type: ignore[no-untyped-def]
    """The straightforward stdlib version: regex, parse_qsl, one row per delivery."""
    with path.open() as lines:
        for line in lines:
            match = COMBINED.match(line)
            if match is None or not match["target"].startswith("/webhook?"):
                continue
            query = match["target"].partition("?")[2]
            fields = dict(parse_qsl(query))
            row = {column: None for column in COLUMNS.values()}
            extra = {}
            for name, value in fields.items():
                column = COLUMNS.get(name)
                if column is None:
                    extra[name] = value
                else:
                    row[column] = int(value) if column in INTEGERS else value
            row["transferred"] = row["transferred"] == "yes"
            row["bridged"] = None if row["bridged"] is None else row["bridged"] == "yes"
            received = parse_time(match["time"])
            key = hashlib.blake2b(query.encode(), digest_size=16).digest()
            yield (
                extra.pop("myid"),
                row["event_time_us"] or received,
                json.dumps(extra),
                "[]",
                received,
                "replay:access-log",
                "GET",
                query.encode(),
                b"",
                key,
                *row.values(),
            )


def baseline(log: Path, db: Path) -> None:
    connection = sqlite3.connect(db, isolation_level=None)
    connection.executescript(f"PRAGMA journal_mode=WAL; BEGIN; {MIGRATIONS[0]} COMMIT;")
    columns = [
        "myid",
        "order_us",
        "extra",
        "flags",
        "received_at_us",
        "source",
        "raw_method",
        "raw_query",
        "raw_body",
        "dedup_key",
        *COLUMNS.values(),
    ]
    marks = ", ".join("?" * len(columns))
    connection.execute("BEGIN")
    connection.executemany(
        f"INSERT INTO events ({', '.join(columns)}) VALUES ({marks})", baseline_rows(log)
    )
    connection.execute("COMMIT")
    connection.close()


def timed(command: list[str]) -> tuple[float, float]:
    """Run a process; its wall time in seconds and its peak RSS in MB."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM events").fetchone()[0]


def report(name: str, seconds: float, peak_mb: float, events: int, db: Path) -> None:
    print(
        f"{name:16} {seconds:7.1f} s  {events / seconds:9,.0f} deliveries/s  "
        f"peak {peak_mb:5.0f} MB  stored {count(db):,}"
    )


def disk_use(db: Path, events: int) -> None:
    """The database's bytes per event, everything included, and each table's and index's."""
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            parts = connection.execute(
                "SELECT name, sum(pgsize) AS size FROM dbstat GROUP BY name ORDER BY size DESC"
            ).fetchall()
        except sqlite3.OperationalError:  # SQLite built without the dbstat table
            parts = []
    wal = db.with_name(db.name + "-wal")
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    print(
        f"database, calls included {size / 1e6:,.1f} MB = {size / events:,.0f} bytes/event "
        "(target <= 1,200)"
    )
    for name, part in parts:
        print(
            f"  {name:24} {part / 1e6:8,.1f} MB  {part / events:6,.0f} bytes/event  "
            f"{part / size:4.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the access log")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    parser.add_argument(
        "--baseline", nargs=2, type=Path, metavar=("LOG", "DB"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.baseline:
        baseline(*args.baseline)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "access.log"
        started = time.perf_counter()
        events = generate(log, args.lines)
        print(
            f"generated {args.lines:,} lines ({events:,} deliveries, "
            f"{log.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s"
        )
        base_db, ours_db = work / "baseline.db", work / "receiver.db"
        for db in (base_db, ours_db):
            db.unlink(missing_ok=True)
        base_s, base_mb = timed([sys.executable, __file__, "--baseline", str(log), str(base_db)])
        report("baseline", base_s, base_mb, events, base_db)
        ours_s, ours_mb = timed(
            [sys.executable, "-m", "receiver", "replay", "--quiet", "--db", str(ours_db), str(log)]
        )
        report("receiver replay", ours_s, ours_mb, events, ours_db)
        disk_use(ours_db, count(ours_db))
        print(
            f"ratio receiver/baseline {ours_s / base_s:.2f}x (target <= 2), "
            f"peak memory {ours_mb:.0f} MB (target < 200)"
        )


if __name__ == "__main__":
    main()
