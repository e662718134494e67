"""A webhook sink for the forwarding tests: a real HTTP server on a free port of this machine,
in a thread, recording every request it gets and answering as it is told."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request the sink got, and the status it answered."""

    at: float  # time.time() on arrival
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def message(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


@dataclass
class Sink:
    """`answers`: (status, headers) for the next requests, in turn; then 200. `answer`, when
    set, decides instead, from the request's body."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    answer: Callable[[bytes], tuple[int, dict[str, str]]] | None = None
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        sink = self
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if sink.delay:
                    time.sleep(sink.delay)
                with sink.lock:
                    if sink.answer is not None:
                        status, extra = sink.answer(body)
                    elif sink.answers:
                        status, extra = sink.answers.pop(0)
                    else:
                        status, extra = 200, {}
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    found = Received(time.time(), self.path, headers, body, status)
                    sink.received.append(found)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of_type(self, kind: str, *, ok_only: bool = False) -> list[Received]:
        with self.lock:
            found = list(self.received)
        return [
            r for r in found if r.message.get("type") == kind and (r.status == 200 or not ok_only)
        ]

    def wait(self, done: Callable[[], bool], seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"the sink did not get what was awaited in {seconds} s: "
                                     f"{len(self.received)} requests")  # fmt: skip
            time.sleep(0.02)
