"""The HTTP requests of the forwarding, made by a process of their own.

An HTTP client's Python work for a request (building it, parsing the answer) costs more than
storing the event it forwards; in the server's event loop it took turns with the deliveries'
parsing, and ingest fell to a third at 1,000 deliveries a second (bench/forward.py). So the
delivery worker (delivery.py) decides everything, claims and records in the outbox, signs each
message, and this child process only sends: a request comes on its stdin (url, headers, body,
timeout, concurrency), its answer goes back on its stdout (status, Retry-After, the start of the
body, or the error), each as a pickled frame. It exits when its stdin closes: a killed server
never leaves it behind. (A lower CPU priority for it, tried so that under more load than the
machine can take the deliveries' answers go first, starved it behind other programs on a shared
machine: with a load of 7 on 2 cores, at nice 5 it sent 170 messages a second, at 0 350.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import ssl
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httptools

from receiver.store.writer import FRAME, frame, write_all

log = logging.getLogger("receiver.forward")

ANSWER_KEPT = 200  # characters of an error answer's body sent back (for last_error)
BODY_KEPT = 4096  # bytes of an answer's body kept to make them of
NICENESS = 0  # the sender's CPU priority below the server's (see above)


@dataclass(frozen=True, slots=True)
class Request:
    number: int
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float
    concurrency: int


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request came to: a status (with its Retry-After and the start of its body), or
    an error saying why there is none."""

    number: int
    status: int | None
    retry_after: str | None = None
    text: str = ""
    error: str | None = None


class SenderGone(RuntimeError):
    """The sender process ended."""


class Sender:
    """The server's side: starts the process, and sends a request through it."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._numbers = 0
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._unsent: list[bytes] = []  # frames written together at the loop's next turn

    async def start(self) -> None:
        program = "import receiver.forward.sender as s; s.serve()"
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", program, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self._process), name="receiver-sender")

    async def send(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float, concurrency: int
    ) -> Answer:
        async with self._starting:
            if self._process is None or self._process.returncode is not None:
                if self._process is not None:
                    log.error("the forwarding's sender process ended; starting a new one")
                await self.start()
        assert self._process is not None and self._process.stdin is not None
        if self._process.stdin.is_closing():
            raise SenderGone("the forwarding's sender process is stopping")
        self._numbers += 1
        number = self._numbers
        future = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unsent.append(frame(Request(number, url, headers, body, timeout, concurrency)))
        answer: Answer = await future
        return answer

    def _flush(self) -> None:
        """Write the requests made since the last turn of the loop in one write: a write per
        request to the sender's pipe was a third of the forwarding's cost in the server's
        event loop (each one a system call, and often a switch to the sender process)."""
        unsent, self._unsent = self._unsent, []
        if self._process is not None and self._process.stdin is not None and unsent:
            if self._process.stdin.is_closing():
                return  # its reader fails the waiting requests: the sender is gone
            self._process.stdin.write(b"".join(unsent))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                (size,) = FRAME.unpack(await process.stdout.readexactly(FRAME.size))
                answer: Answer = pickle.loads(await process.stdout.readexactly(size))
                future = self._waiting.pop(answer.number, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            await process.wait()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(SenderGone("the forwarding's sender process ended"))
            self._waiting.clear()

    async def stop(self) -> None:
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(self._process.wait(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._process = None


def serve() -> None:
    """The sender process: requests on stdin, answers on stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if NICENESS:
        with contextlib.suppress(OSError):
            os.nice(NICENESS)
    results = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, not into the answers
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(relay(results))


async def relay(results: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    pools: dict[tuple[str, str, int], Pool] = {}
    tasks: set[asyncio.Task[None]] = set()
    answers: list[bytes] = []  # written together at the loop's next turn

    def flush() -> None:
        done = b"".join(answers)
        answers.clear()
        write_all(results, done)

    async def send(request: Request) -> None:
        try:
            parts = urlsplit(request.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            key = (parts.scheme, parts.hostname or "", port)
            pool = pools.get(key) or pools.setdefault(key, Pool(*key))
            async with asyncio.timeout(request.timeout):
                answer = await pool.post(request, parts)
        except TimeoutError:
            answer = Answer(request.number, None, error=f"no answer within {request.timeout:g} s")
        except Exception as failure:  # every other failure is the attempt's, said in its error
            name = type(failure).__name__
            answer = Answer(
                request.number, None, error=name + (f": {failure}" * bool(str(failure)))
            )
        if not answers:
            loop.call_soon(flush)
        answers.append(frame(answer))

    try:
        while True:
            try:
                (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
                request: Any = pickle.loads(await reader.readexactly(size))
            except asyncio.IncompleteReadError:
                return  # the server closed our stdin: it is gone or done
            task = asyncio.create_task(send(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        for pool in pools.values():
            pool.close()


class Response:
    """One answer as httptools parses it: status, headers, the start of the body."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, chunk: bytes) -> None:
        if len(self.body) < BODY_KEPT:
            self.body += chunk[: BODY_KEPT - len(self.body)]

    def on_message_complete(self) -> None:
        self.complete = True


class Pool:
    """Kept-alive HTTP/1.1 connections to one origin (the server limits how many are busy).

    An HTTP client's Python work per request was most of the forwarding's cost: httpx took
    760 µs of CPU a POST on this project's test machine (bench/forward.py, 1,000 a second, a
    core of its own). A request here is one write of its head and body; the answer is parsed
    by httptools (uvicorn's C parser, a dependency already), a few tens of µs in all.
    """

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        default = 443 if scheme == "https" else 80
        self.host_header = host if port == default else f"{host}:{port}"
        if ":" in host:  # an IPv6 address
            self.host_header = f"[{host}]" if port == default else f"[{host}]:{port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context() if self.scheme == "https" else None
        return await asyncio.open_connection(self.host, self.port, ssl=context)

    async def post(self, request: Request, parts: SplitResult) -> Answer:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {target} HTTP/1.1", f"host: {self.host_header}",
                f"content-length: {len(request.body)}"]  # fmt: skip
        head += [f"{name}: {value}" for name, value in request.headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body
        while self.idle:
            connection = self.idle.pop()
            try:
                return await self.exchange(connection, data, request.number)
            except (ConnectionError, EOFError):
                continue  # the destination closed a kept connection meanwhile: another
        return await self.exchange(await self.connect(), data, request.number, fresh=True)

    async def exchange(
        self,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        data: bytes,
        number: int,
        *,
        fresh: bool = False,
    ) -> Answer:
        reader, writer = connection
        response = Response()
        parser = httptools.HttpResponseParser(response)
        got_any = False
        try:
            writer.write(data)
            while not response.complete:
                chunk = await reader.read(65536)
                if not chunk:
                    if not got_any and not fresh:
                        raise EOFError("closed before answering")
                    if got_any and parser.get_status_code():
                        break  # an answer without a length ends with its connection
                    raise ConnectionError("the connection closed before an answer")
                got_any = True
                parser.feed_data(chunk)
        except BaseException:
            writer.close()
            raise
        status = parser.get_status_code()
        if response.complete and parser.should_keep_alive():
            self.idle.append(connection)
        else:
            writer.close()
        text = "" if 200 <= status < 300 else response.body.decode("utf-8", "replace")
        return Answer(number, status, response.headers.get("retry-after"), text[:ANSWER_KEPT])

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
