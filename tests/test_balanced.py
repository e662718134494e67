"""Three `receiver serve` processes on one database behind a real nginx, one of them killed
with SIGKILL under load: every delivery answered 200 is stored exactly once, and every
instance answers the same calls.

nginx is started by the test with the configuration docs/deploy.md shows (tests/balancer.py).
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from pbx_emulator.simulate import calls as simulated_calls
from pbx_emulator.simulate import make_offices, query_string
from receiver.event import now_us
from tests.balancer import Nginx, nginx_binary
from tests.conftest import ServerProcess, wait_for_calls
from tests.postgres import temporary_database

# An event as the PBX identifies it: CallID, SubCallID, EventType, EventTime (pbx-events §7).
Key = tuple[str | None, str | None, str, int]


def deliveries(calls: int) -> list[tuple[str, Key]]:
    """The webhook paths of `calls` simulated calls' events (every kind of call), in time order,
    each with its key."""
    made = itertools.islice(
        simulated_calls(make_offices(3, seed=14), seed=14, start_us=now_us(), every_us=(1, 9)),
        calls,
    )
    found = sorted(
        ((owner, fields) for call in made for owner, fields in call.events),
        key=lambda item: int(item[1]["EventTime"]),
    )
    out = []
    for owner, fields in found:
        key = (fields.get("CallID"), fields.get("SubCallID"), fields["EventType"],
               int(fields["EventTime"]))  # fmt: skip
        out.append((f"/webhook?myid={owner}&{query_string(fields)}", key))
    return out


def send_all(
    url: str, todo: list[tuple[str, Key]], workers: int, answered: dict[Key, int]
) -> Counter[int]:
    """Send every delivery once (half by GET, half by POST), from `workers` threads; each
    answered 200 goes into `answered` with its id. The statuses of the others are counted."""
    lock = threading.Lock()
    others: Counter[int] = Counter()
    queue = iter(enumerate(todo))

    def work() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                n, (path, key) = item
                try:
                    if n % 2:
                        response = client.get(f"{url}{path}")
                    else:
                        where, _, body = path.partition("&")
                        form = {"content-type": "application/x-www-form-urlencoded"}
                        response = client.post(f"{url}{where}", content=body, headers=form)
                except httpx.TransportError:
                    with lock:
                        others[0] += 1
                    continue
                with lock:
                    if response.status_code == 200:
                        answered[key] = response.json()["id"]
                    else:
                        others[response.status_code] += 1

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return others


def all_pages(url: str, path: str, items: str) -> list[dict[str, object]]:
    """Every item of a keyset-paged listing."""
    found: list[dict[str, object]] = []
    after = None
    with httpx.Client(timeout=30) as client:
        while True:
            params: dict[str, str | int] = {"limit": 1000, **({"after": after} if after else {})}
            page = client.get(f"{url}{path}", params=params).json()
            found += page[items]
            after = page["next"]
            if after is None:
                return found


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    """The --db of the three instances."""
    if backend == "sqlite":
        yield str(folder / "receiver.db")
        return
    with temporary_database() as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_three_instances_behind_nginx_lose_nothing_when_one_is_killed(
    backend: str, tmp_path: Path
) -> None:
    nginx_binary()  # skips (or fails under CI) before anything starts
    todo = deliveries(400)
    with database(backend, tmp_path) as db:
        servers = [ServerProcess(db, log_dir=tmp_path) for _ in range(3)]  # type: ignore[arg-type]
        for server in servers:  # at the same moment: the schema is made once
            server.launch()
        balancer = None
        try:
            for server in servers:
                server.wait_ready()
            balancer = Nginx(tmp_path / "nginx", [server.port for server in servers]).start()
            answered: dict[Key, int] = {}
            victim = servers[1]
            killed_at: list[int] = []

            def kill_mid_load() -> None:
                deadline = time.monotonic() + 60
                while len(answered) < len(todo) // 3 and time.monotonic() < deadline:
                    time.sleep(0.005)
                killed_at.append(len(answered))
                victim.stop(signal.SIGKILL)

            killer = threading.Thread(target=kill_mid_load)
            killer.start()
            others = send_all(balancer.url, todo, 8, answered)
            killer.join()
            assert victim.process is not None and victim.process.returncode == -signal.SIGKILL
            assert killed_at[0] < len(todo) * 0.6  # killed with most of the load still to come
            # nginx sends what the dead instance did not answer to another: nearly all get 200.
            assert len(answered) >= len(todo) * 0.95, (others, balancer.errors())
            served = Counter(
                line.split()[2] for line in (tmp_path / "nginx" / "access.log").read_text()
                .splitlines()
            )  # fmt: skip
            assert len(served) >= 3, served  # the load went to all three before the kill

            # The killed instance comes back (on a new port) and answers like the others.
            again = ServerProcess(db, log_dir=tmp_path).start()  # type: ignore[arg-type]
            servers.append(again)
            alive = [servers[0], servers[2], again]

            stored = all_pages(servers[0].url, "/api/events", "events")
            keys = Counter(
                (e["call_id"], e["sub_call_id"], e["event_type"], e["event_time_us"])
                for e in stored
            )
            twice = [key for key, count in keys.items() if count > 1]
            assert not twice, f"stored more than once: {twice[:5]}"
            missing = [key for key in answered if key not in keys]
            assert not missing, f"answered 200 but not stored: {missing[:5]}"
            by_id = {e["id"]: e for e in stored}
            for key, event_id in answered.items():  # the id answered is that event's
                event = by_id[event_id]
                assert (event["call_id"], event["sub_call_id"], event["event_type"],
                        event["event_time_us"]) == key  # fmt: skip

            for server in alive:
                wait_for_calls(lambda path, s=server: httpx.get(f"{s.url}{path}", timeout=10))
            views = [all_pages(server.url, "/api/calls", "calls") for server in alive]
            assert len(views[0]) >= 300  # nearly every call, most of them whole
            assert views[1] == views[0] and views[2] == views[0]
            assert view_through(balancer.url) == views[0]
            for server in alive:
                assert "Traceback" not in server.log.read_text()
        finally:
            if balancer is not None:
                balancer.stop()
            for server in servers:
                if server.process is not None and server.process.poll() is None:
                    server.stop()


def view_through(url: str) -> list[dict[str, object]]:
    """The calls as read through the balancer (each page from whichever instance)."""
    return all_pages(url, "/api/calls", "calls")


def test_the_documented_nginx_config_is_one_nginx_takes(tmp_path: Path) -> None:
    """nginx itself accepts the configuration docs/deploy.md shows, ports put in (`nginx -t`)."""
    balancer = Nginx(tmp_path / "nginx", [8001, 8002, 8003, 8004])
    config = balancer.main_config()
    assert config.count("server 127.0.0.1:800") == 4  # one line an instance, as documented
    assert f"listen 127.0.0.1:{balancer.port};" in config
    checked = balancer.check()
    assert checked.returncode == 0, checked.stderr
