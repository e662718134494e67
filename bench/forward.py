"""Forwarding: the lag from a webhook's 200 to the destination's receipt, and what forwarding costs
ingest, in one run.

    python bench/forward.py [--rate 1000] [--seconds 30] [--wrk-seconds 10] [--rounds 2]
                            [--types event.received,call.started,...]

Each server runs as its own process on a free local port, the destination (bench/sink.py) too.

1. Steady load: --rate deliveries a second for --seconds (real hangup deliveries, each a call of
   its own, sent by GET over 64 kept-alive connections, each delivery at its moment), to a
   receiver forwarding to the sink, then to one forwarding nowhere. Prints the webhook's answer
   latency for both, and for every event the lag from its 200 to the sink's receipt of its
   event.received (p50, p95, p99, max), whether every one arrived, and the ratio of the two
   runs' deliveries a second (the target: at least 0.9).
2. Flat out: wrk as bench/ingest.py drives it, --wrk-seconds a run, a receiver forwarding and one
   not taking turns --rounds times; the ratio of the medians of their requests a second.

Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, free_port, python, start
from ingest import wrk

HERE = Path(__file__).resolve().parent
SAMPLE = (ROOT / "tests" / "samples" / "outbound-hangup.txt").read_text().strip()
CALL_ID = "b5187f38a9cc43f2ba068bce983a513e"
EVENT_TIME = "EventTime=1502985750238219"
CONNECTIONS = 64


def receiver(port: int, db: Path, forward_to: str | None, rules: Path | None) -> list[str]:
    command = [python(), "-m", "receiver", "serve", "--port", str(port), "--db", str(db),
               "--log-level", "warning"]  # fmt: skip
    if rules is not None:
        command += ["--forward-rules", str(rules)]
    elif forward_to is not None:
        command += ["--forward", forward_to]
    return command


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * share), len(ordered) - 1)] if ordered else float("nan")


async def steady(
    port: int, rate: float, seconds: float, run: int
) -> dict[str, tuple[float, float]]:
    """Send rate x seconds deliveries at their moments; each call id's (sent, answered 200)
    times (time.time())."""
    total = int(rate * seconds)
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    answered: dict[str, tuple[float, float]] = {}
    base_us = int(time.time() * 1e6)

    async def ticker() -> None:
        began = time.perf_counter()
        for n in range(total):
            due = began + n / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.put_nowait(n)
        for _ in range(CONNECTIONS):
            queue.put_nowait(None)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (n := await queue.get()) is not None:
            call_id = f"{run:08x}{n:024x}"
            payload = SAMPLE.replace(CALL_ID, call_id).replace(
                EVENT_TIME, f"EventTime={base_us + n}"
            )
            request = (f"GET /webhook?myid=175&{payload} HTTP/1.1\r\nHost: bench\r\n\r\n").encode()
            sent = time.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if status == 200:
                answered[call_id] = (sent, time.time())
        writer.close()

    await asyncio.gather(ticker(), *(connection() for _ in range(CONNECTIONS)))
    return answered


def sink_notes(port: int) -> list[list[object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as answer:
        notes: list[list[object]] = json.loads(answer.read())
    return notes


def steady_run(args: argparse.Namespace, work: Path, forwarding: bool, rules: Path | None) -> float:
    """One steady run; the deliveries a second answered 200."""
    sink_port, port = free_port(), free_port()
    sink = start([python(), str(HERE / "sink.py"), str(sink_port)],
                 f"http://127.0.0.1:{sink_port}/stats")  # fmt: skip
    db = work / f"steady-{'forward' if forwarding else 'none'}.db"
    target = f"http://127.0.0.1:{sink_port}/hook" if forwarding else None
    if rules is not None:
        rules.write_text(f'[[destination]]\nurl = "{target}"\ntypes = {json.dumps(args.types)}\n')
    server = start(receiver(port, db, target, rules if forwarding else None),
                   f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    try:
        began = time.monotonic()
        answered = asyncio.run(steady(port, args.rate, args.seconds, 1 if forwarding else 2))
        took = time.monotonic() - began
        latencies = [(done - sent) * 1000 for sent, done in answered.values()]
        label = "forwarding" if forwarding else "no forward"
        print(
            f"steady {label}: {len(answered)} answered 200 of {int(args.rate * args.seconds)} in "
            f"{took:.1f} s ({len(answered) / took:.0f}/s); 200 latency p50 "
            f"{percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms",
            flush=True,
        )
        if not forwarding:
            return len(answered) / took
        deadline = time.monotonic() + 60
        while True:
            notes = sink_notes(sink_port)
            events = {n[3]: float(n[0]) for n in notes if n[2] == "event.received"}
            if len(events) >= len(answered) or time.monotonic() > deadline:
                break
            time.sleep(1)
        lags = [events[c] - done for c, (_, done) in answered.items() if c in events]
        missing = len(answered) - len(lags)
        kinds: dict[str, int] = {}
        for note in notes:
            kinds[str(note[2])] = kinds.get(str(note[2]), 0) + 1
        print(
            f"lag from 200 to the sink's receipt (event.received): p50 "
            f"{percentile(lags, 0.5) * 1000:.0f} ms, p95 {percentile(lags, 0.95) * 1000:.0f} ms "
            f"(target < 1000), p99 {percentile(lags, 0.99) * 1000:.0f} ms, max "
            f"{max(lags) * 1000:.0f} ms; {missing} not received; the sink got {kinds}",
            flush=True,
        )
        return len(answered) / took
    finally:
        server.terminate()
        server.wait()
        sink.terminate()
        sink.wait()


def flat_out(args: argparse.Namespace, work: Path, rules: Path | None) -> None:
    sink_port = free_port()
    sink = start([python(), str(HERE / "sink.py"), str(sink_port)],
                 f"http://127.0.0.1:{sink_port}/stats")  # fmt: skip
    target = f"http://127.0.0.1:{sink_port}/hook"
    if rules is not None:
        rules.write_text(f'[[destination]]\nurl = "{target}"\ntypes = {json.dumps(args.types)}\n')
    runs: dict[str, list[float]] = {"no forward": [], "forwarding": []}
    try:
        for round_ in range(args.rounds):
            for label in runs:
                port = free_port()
                db = work / f"flat-{label.replace(' ', '-')}-{round_}.db"
                forwarding = label == "forwarding"
                server = start(
                    receiver(port, db, target if forwarding else None,
                             rules if forwarding else None),
                    f"http://127.0.0.1:{port}/healthz",
                )  # fmt: skip
                try:
                    wrk(port, "GET", 1, 32)  # warm up
                    stats = wrk(port, "GET", args.wrk_seconds, 32)
                finally:
                    server.terminate()
                    server.wait()
                runs[label].append(stats["rps"])
                print(f"flat out {label:10}: {stats['rps']:7.0f} req/s  p99 "
                      f"{stats['p99_ms']:6.2f} ms  non-2xx {stats['non2xx']}",
                      flush=True)  # fmt: skip
    finally:
        sink.terminate()
        sink.wait()
    without, with_ = (statistics.median(runs[k]) for k in ("no forward", "forwarding"))
    print(f"flat out: forwarding/no forward throughput {with_ / without:.2f}x (the capacity "
          f"left, beyond the steady target): medians {with_:.0f} and {without:.0f} "
          "req/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000, help="deliveries a second, steady")
    parser.add_argument("--seconds", type=float, default=30, help="length of the steady runs")
    parser.add_argument("--wrk-seconds", type=float, default=10, help="length of a wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="flat-out runs of each, in turns")
    parser.add_argument("--types", default=None,
                        help="the destination's message types, comma-separated (all)")  # fmt: skip
    args = parser.parse_args()
    args.types = args.types.split(",") if args.types else None
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rules = work / "forward.toml" if args.types else None
        print(f"types: {args.types or 'all'}; {args.rate:g}/s for {args.seconds:g} s", flush=True)
        forwarded = steady_run(args, work, True, rules)
        alone = steady_run(args, work, False, None)
        print(f"steady: forwarding/no forward throughput {forwarded / alone:.2f}x (target >= "
              f"0.9)", flush=True)  # fmt: skip
        flat_out(args, work, rules)


if __name__ == "__main__":
    main()
