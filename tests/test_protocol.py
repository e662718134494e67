"""Slow clients against a real `receiver serve`: they are let go, and never crowd out the PBX."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
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


def read_to_end(sock: socket.socket, seconds: float = 30) -> bytes:
    """Everything the server sends until it closes the connection (at most `seconds`)."""
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


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
