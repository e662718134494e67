"""Slow clients against a real `receiver serve`: they are let go, and never crowd out the PBX."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ServerProcess, sample

HANGUP = sample("outbound-hangup")
HALF_HEADERS = b"GET /webhook?myid=7 HTTP/1.1\r\nHost: receiver\r\nUser-Agent: sl"
SHORT_BODY = (
    b"POST /webhook?myid=7 HTTP/1.1\r\nHost: receiver\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    b"EventType="  # 10 of the 100 bytes it announced
)


@pytest.fixture(autouse=True)
def enough_open_files() -> Iterator[None]:
    """This test process holds a thousand sockets too: its own soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard open-file limit here is {hard}: too few for a thousand sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def slow_clients(port: int, sends: list[bytes]) -> Iterator[list[socket.socket]]:
    """One connection per item of `sends`, each sending it and then nothing more."""
    sockets = []
    try:
        for data in sends:
            sock = socket.create_connection(("127.0.0.1", port))
            sockets.append(sock)
            if data:
                sock.sendall(data)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def open_connections(pid: int) -> int:
    """How many sockets a process holds."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fds / fd).startswith("socket:")
    return count


def answered_or_closed(sockets: list[socket.socket]) -> list[int]:
    """The file numbers of the sockets with something to read (an answer, or their end)."""
    poll = select.poll()  # not select(): file numbers here pass 1,024
    for sock in sockets:
        poll.register(sock, select.POLLIN)
    return [fd for fd, _ in poll.poll(0)]


def read_to_end(sock: socket.socket, seconds: float = 30) -> bytes:
    """Everything the server sends until it closes the connection (at most `seconds`)."""
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_thousand_slow_connections_do_not_stop_deliveries(tmp_path: Path) -> None:
    # It starts with a soft limit of 512 open files: only raising it to the hard limit at start
    # lets it hold the thousand and still accept the deliveries.
    running = ServerProcess(
        tmp_path / "receiver.db", "--header-timeout", "120", "--body-timeout", "120",
        open_files=512,
    ).start()  # fmt: skip
    assert running.process is not None
    try:
        limits = Path(f"/proc/{running.process.pid}/limits").read_text()
        soft, hard = next(line for line in limits.splitlines() if "open files" in line).split()[3:5]
        assert soft == hard
        with slow_clients(running.port, [HALF_HEADERS] * 900 + [SHORT_BODY] * 100) as slow:
            deadline = time.monotonic() + 30
            while open_connections(running.process.pid) < 1000 and time.monotonic() < deadline:
                time.sleep(0.1)  # the server takes them in as its loop gets to them
            assert open_connections(running.process.pid) >= 1000
            with httpx.Client(base_url=running.url, timeout=10) as client:
                for n in range(20):
                    payload = HANGUP.replace("b5187f38a9cc43f2ba068bce983a513e", f"{n:032x}")
                    answer = client.get(f"/webhook?myid=7&{payload}")
                    assert answer.status_code == 200, answer.text
                    fresh = httpx.get(f"{running.url}/healthz", timeout=10)  # a new connection
                    assert fresh.status_code == 200
            assert answered_or_closed(slow) == []  # all still open and unanswered meanwhile
    finally:
        _, logged = running.stop()
    assert "Too many open files" not in logged


def test_slow_headers_are_closed_and_a_body_that_stops_gets_408(tmp_path: Path) -> None:
    running = ServerProcess(
        tmp_path / "receiver.db", "--header-timeout", "1", "--body-timeout", "1"
    ).start()
    try:
        sends = [b""] * 20 + [HALF_HEADERS] * 200 + [SHORT_BODY] * 20
        with slow_clients(running.port, sends) as slow:
            answers = [read_to_end(sock) for sock in slow]
        assert answers[:220] == [b""] * 220  # closed, with no answer: the request is not known
        for answer in answers[220:]:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ")
            assert b"connection: close" in head.lower()
            assert json.loads(body) == {
                "ok": False,
                "status": 408,
                "error": "the body did not all arrive within 1 s (10 bytes came): "
                "send the whole request at once",
            }
        rejects = httpx.get(f"{running.url}/api/rejects", timeout=10).json()["rejects"]
        assert [(r["status"], r["body"]) for r in rejects] == [(408, "EventType=")] * 20
        # A client that keeps its connection between requests is not cut off by the deadline.
        with httpx.Client(base_url=running.url, timeout=10) as client:
            for _ in range(3):
                assert client.get("/healthz").status_code == 200
    finally:
        running.stop()


def test_pipelined_requests_are_all_answered_within_the_header_deadline(tmp_path: Path) -> None:
    running = ServerProcess(tmp_path / "receiver.db", "--header-timeout", "1").start()
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n"
        last = b"GET /healthz HTTP/1.1\r\nHost: receiver\r\nConnection: close\r\n\r\n"
        with slow_clients(running.port, [request * 4 + last]) as (sock,):
            answers = read_to_end(sock)
        assert answers.count(b"HTTP/1.1 200 OK") == 5
    finally:
        running.stop()
