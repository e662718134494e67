"""The live stream under load: 50 Server-Sent Events clients while deliveries arrive.

    python bench/live.py [--clients 50] [--rate 50] [--seconds 10] [--burst 3000]

Runs `receiver serve` on a new database, then measures, in the same run:

- ingest throughput (a burst of deliveries, 16 at a time) with no stream open: the baseline;
- the same burst with `--clients` streams open, each reading every message: the ratio to the
  baseline (target: at least 0.9);
- at a steady `--rate` deliveries a second, the time from a delivery's 200 to each client
  receiving its event: p50, p95 and the worst (target: p95 under 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, python, start

ROOT = Path(__file__).resolve().parent.parent
HANGUP = (ROOT / "tests" / "samples" / "outbound-hangup.txt").read_text().strip()
OLD_ID = "b5187f38a9cc43f2ba068bce983a513e"


def delivery() -> str:
    return HANGUP.replace(OLD_ID, uuid.uuid4().hex)


async def burst(url: str, count: int) -> float:
    """Deliveries per second for `count` deliveries, 16 at a time."""
    left = count

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            answer = await client.get(f"/webhook?myid=1&{delivery()}")
            assert answer.status_code == 200, answer.text

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(16)))
    return count / (time.perf_counter() - started)


async def listen(url: str, clients: int) -> None:
    """The listeners' own process (so that reading 50 streams takes none of the load's CPU):
    prints `ready` once every stream is open, and when its stdin closes, the arrival time
    (time.monotonic, the same clock in every process) of each event id at each stream."""
    arrived: list[dict[int, float]] = [{} for _ in range(clients)]
    opened = 0
    all_open = asyncio.Event()

    async def one(client: httpx.AsyncClient, seen: dict[int, float]) -> None:
        nonlocal opened
        async with client.stream("GET", "/api/stream") as response:
            opened += 1
            if opened == clients:
                all_open.set()
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    seen.setdefault(int(line[4:].split(":")[0]), time.monotonic())

    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        tasks = [asyncio.create_task(one(client, seen)) for seen in arrived]
        await all_open.wait()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(arrived))


async def main(clients: int, rate: float, seconds: float, count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [python(), "-m", "receiver", "serve", "--db", f"{folder}/live.db",
                   "--port", str(port), "--log-level", "warning"]  # fmt: skip
        server = start(command, f"{url}/healthz")
        try:
            await burst(url, 300)  # warm up
            alone = await burst(url, count)
            print(f"ingest, no stream open        {alone:8.0f} deliveries/s")
            listeners = subprocess.Popen(
                [python(), __file__, "--listen", url, "--clients", str(clients)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert listeners.stdout is not None and listeners.stdin is not None
            assert listeners.stdout.readline().strip() == "ready"
            watched = await burst(url, count)
            print(f"ingest, {clients} streams open       {watched:8.0f} deliveries/s  "
                  f"ratio {watched / alone:.2f} (target >= 0.9)")  # fmt: skip
            answered: dict[int, float] = {}
            async with httpx.AsyncClient(base_url=url, timeout=30) as sender:
                next_at = time.monotonic()
                for _ in range(int(rate * seconds)):
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    answer = await sender.get(f"/webhook?myid=1&{delivery()}")
                    answered[answer.json()["id"]] = time.monotonic()
                    next_at += 1 / rate
            await asyncio.sleep(1)
            out, _ = listeners.communicate("", timeout=60)
            arrived = [{int(k): v for k, v in seen.items()} for seen in json.loads(out)]
            delays = sorted(
                max(0.0, seen[event] - at) * 1000
                for seen in arrived
                for event, at in answered.items()
                if event in seen
            )
            missing = len(answered) * clients - len(delays)
            p95 = delays[int(len(delays) * 0.95)]
            print(f"200 to each client, {rate:g}/s x {clients}: p50 "
                  f"{statistics.median(delays):6.1f} ms  p95 {p95:6.1f} ms (target < 100)  "
                  f"worst {delays[-1]:6.1f} ms  not received {missing}")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--listen", metavar="URL", help="(the listeners' own process)")
    options = parser.parse_args()
    if options.listen:
        asyncio.run(listen(options.listen, options.clients))
    else:
        asyncio.run(main(options.clients, options.rate, options.seconds, options.burst))
