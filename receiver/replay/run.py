"""Replay: deliveries read back from access logs, query-string files and NDJSON exports.

Each delivery goes through the same parse, tagging and de-duplication as a live request, then
into the store, or, with `--to`, is sent again to a running receiver.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import gzip
import io
import itertools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, cast
from urllib.parse import quote

import httpx2 as httpx

from receiver.event import Event, RawRequest, Source, now_us, parse_time
from receiver.parse import MYID, MissingMyid, Rejected, is_receiver_name, parse_request
from receiver.replay.logformat import COMBINED_REGEX, LogFormatError, format_regex, read_line
from receiver.retry import pauses, transient
from receiver.store import Storage, Stored

FORMATS = ("access-log", "query-lines", "ndjson")
CHUNK = 4000  # events handed to the store at a time
CHUNKS_AHEAD = 2  # chunks stored while the next is parsed (and one more handed over): bounds memory
# How often parsing lets the event loop run: a writer process gets a chunk through a pipe, and
# what did not fit the pipe at once is sent only when the loop runs, so a loop kept busy
# parsing the next chunk would leave the writer waiting for the rest of this one.
YIELD_EVERY = 50
EXAMPLES = 10  # malformed lines shown with file and line number
FORM = "application/x-www-form-urlencoded"


class ReplayError(Exception):
    """A problem that stops a replay before it starts (unreadable file, unknown format)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery read from a file."""

    raw: RawRequest
    source: str  # replay:<format>
    received_at_us: int | None  # None: the file does not say; the replay's own time is used
    myid: str | None  # the myid to use when the query has none (an NDJSON record knows it)
    where: str  # file:line


@dataclasses.dataclass
class Summary:
    """What a replay did."""

    lines: int = 0
    deliveries: int = 0
    stored: int = 0
    duplicates: int = 0
    events: int = 0  # deliveries that parsed into events
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    malformed: int = 0
    failed: int = 0  # could not be stored, or not delivered to --to
    examples: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def problem(self, where: str, reason: str, *, failed: bool = False) -> None:
        if failed:
            self.failed += 1
        else:
            self.malformed += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def ok(self) -> bool:
        return not (self.malformed or self.failed)


@dataclasses.dataclass(frozen=True)
class Options:
    """How to read the inputs."""

    format: str | None = None  # None: detect from the first line
    log_format: str | None = None
    path: str | None = None  # keep only access-log requests to this path
    myid: str | None = None  # for deliveries whose query has none
    strict: bool = False  # stop at the first malformed line


class StrictStop(Exception):
    """--strict met a malformed line."""


# Reading inputs.


class Input:
    """One input file (or stdin), gunzipped when its content is gzip, read line by line."""

    def __init__(self, name: str) -> None:
        self.name = "<stdin>" if name == "-" else name
        try:
            # stdin's buffer is a BufferedReader too (typeshed only promises BinaryIO)
            stdin = cast(io.BufferedReader, sys.stdin.buffer)
            self.raw = stdin if name == "-" else open(name, "rb")  # noqa: SIM115
        except OSError as error:
            raise ReplayError(f"cannot read {name}: {error.strerror}") from None
        self.stream: IO[bytes] = self.raw
        if self.raw.peek(2)[:2] == b"\x1f\x8b":  # gzip by content, whatever the name
            self.stream = io.BufferedReader(gzip.GzipFile(fileobj=self.raw))

    def position(self) -> int:
        """Bytes of the file read so far (compressed bytes for gzip)."""
        try:
            return self.raw.tell()
        except OSError:
            return 0

    def lines(self) -> Iterator[tuple[int, bytes]]:
        try:
            for number, line in enumerate(self.stream, 1):
                yield number, line.rstrip(b"\r\n")
        except (OSError, EOFError) as error:  # a truncated or corrupt gzip file
            raise ReplayError(f"{self.name}: cannot read past this point: {error}") from None

    def close(self) -> None:
        if self.raw is not sys.stdin.buffer:
            self.raw.close()


def detect_format(line: bytes) -> str:
    """The format of a file from its first line that is not blank or a comment."""
    if line.startswith(b"{"):
        return "ndjson"
    if COMBINED_REGEX.fullmatch(line):
        return "access-log"
    if b"=" in line:
        return "query-lines"
    raise ReplayError(
        f"cannot tell the format from the line {line[:80]!r}: pass --format "
        "access-log, query-lines or ndjson"
    )


def query_line(line: bytes, where: str) -> Delivery:
    """A raw query string (a whole URL or path is fine too)."""
    if line.startswith((b"/", b"http://", b"https://")):
        line = line.partition(b"?")[2]
    return Delivery(RawRequest("GET", line), Source.REPLAY_QUERY_LINES, None, None, where)


def ndjson_line(line: bytes, where: str) -> Delivery:
    """One record of our own NDJSON export; raises ValueError when it is not one."""
    record = json.loads(line)
    raw = record.get("raw") if isinstance(record, dict) else None
    if not isinstance(raw, dict):
        raise ValueError("no raw request in this record: export with the raw request (ndjson)")

    def data(name: str) -> bytes:
        if f"{name}_base64" in raw:
            return base64.b64decode(raw[f"{name}_base64"], validate=True)
        return str(raw.get(name) or "").encode()

    request = RawRequest(str(raw["method"]), data("query"), data("body"), raw.get("content_type"))
    received = parse_time(record["received_at"]) if record.get("received_at") else None
    return Delivery(request, Source.REPLAY_NDJSON, received, record.get("myid"), where)


def access_log_line(
    line: bytes, pattern: re.Pattern[bytes], path: bytes | None, where: str
) -> Delivery | str:
    """The delivery a log line records, or the reason it is skipped. ValueError: malformed."""
    logged = read_line(pattern, line)
    if logged is None:
        raise ValueError("does not match the log format")
    target_path, _, query = logged.target.partition(b"?")
    if path is not None and target_path != path:
        return "other path"
    fields = query + b"&" + (logged.body or b"")
    if b"EventType=" not in fields and b"eventtype=" not in fields.lower():
        if logged.method == "POST" and logged.body is None and (path or b"myid=" in query):
            return "POST body not in the log (log $request_body to replay POST deliveries)"
        return "not an event delivery"
    content_type = FORM if logged.method == "POST" else None
    raw = RawRequest(logged.method, query, logged.body or b"", content_type)
    return Delivery(raw, Source.REPLAY_ACCESS_LOG, logged.time_us, None, where)


Progress = Callable[["Input", Summary], None]


def read_deliveries(
    source: Input, options: Options, summary: Summary, progress: Progress | None = None
) -> Iterator[Delivery]:
    """Every delivery in one input; skipped and malformed lines are counted in `summary`."""
    lines = source.lines()
    meaningful = ((n, line) for n, line in lines if line.strip() and not line.startswith(b"#"))
    first = next(meaningful, None)
    if first is None:
        return
    fmt = options.format or ("access-log" if options.log_format else detect_format(first[1]))
    pattern = COMBINED_REGEX
    if options.log_format:
        try:
            pattern = format_regex(options.log_format)
        except LogFormatError as error:
            raise ReplayError(f"--log-format: {error}") from None
    path = options.path.encode() if options.path else None
    summary.lines += first[0] - 1
    if first[0] > 1:
        summary.skipped["blank or comment"] += first[0] - 1
    for number, line in itertools.chain([first], lines):
        summary.lines += 1
        if progress is not None and number % 4096 == 0:
            progress(source, summary)
        if not line.strip() or (fmt != "access-log" and line.startswith(b"#")):
            summary.skipped["blank or comment"] += 1
            continue
        where = f"{source.name}:{number}"
        try:
            if fmt == "query-lines":
                found: Delivery | str = query_line(line, where)
            elif fmt == "ndjson":
                found = ndjson_line(line, where)
            else:
                found = access_log_line(line, pattern, path, where)
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            reason = str(error) if isinstance(error, ValueError) else f"missing or bad {error}"
            summary.problem(where, reason)
            if options.strict:
                raise StrictStop from None
            continue
        if isinstance(found, str):
            summary.skipped[found] += 1
            continue
        summary.deliveries += 1
        yield found


def parse_delivery(delivery: Delivery, options: Options) -> Event:
    """The Event of a delivery, exactly as a live request would give it. Raises Rejected."""
    received = delivery.received_at_us
    try:
        event, _ = parse_request(
            delivery.raw,
            received_at_us=received if received is not None else now_us(),
            source=delivery.source,
            default_myid=options.myid or delivery.myid,
        )
    except MissingMyid:
        raise Rejected(400, "myid is missing from the query string: pass --myid") from None
    return event


# Writing: into the store, or to a running receiver.


def count_stored(results: list[Stored | BaseException], summary: Summary) -> None:
    for result in results:
        if isinstance(result, BaseException):
            summary.problem("store", f"could not store an event: {result}", failed=True)
        elif result.duplicate:
            summary.duplicates += 1
        else:
            summary.stored += 1


async def into_store(
    deliveries: Iterator[Delivery], store: Storage | None, options: Options, summary: Summary
) -> None:
    """Parse each delivery and store it; store=None parses only (--dry-run).

    While the writer commits the chunks handed to it (CHUNKS_AHEAD at most), this parses the
    next: the writer always has one waiting, whichever of the two is faster at the moment.
    Between the chunks, the writer builds the calls of what it has stored (reads do not build
    them), which it would else do alone at the end while nothing is parsed.
    """
    chunk: list[Event] = []
    pending: collections.deque[list[asyncio.Future[Stored]]] = collections.deque()
    calls: asyncio.Task[int] | None = None
    try:
        for delivery in deliveries:
            try:
                chunk.append(parse_delivery(delivery, options))
            except Rejected as rejected:
                summary.problem(delivery.where, rejected.reason)
                if options.strict:
                    raise StrictStop from None
                continue
            summary.events += 1
            if summary.events % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if store is None:
                chunk.clear()
            elif len(chunk) >= CHUNK:
                pending.append(store.submit_events(chunk))
                chunk = []
                await asyncio.sleep(0)  # let the writer take the chunk before parsing goes on
                if len(pending) > CHUNKS_AHEAD:
                    oldest = pending.popleft()
                    count_stored(await asyncio.gather(*oldest, return_exceptions=True), summary)
                if calls is None or calls.done():
                    if calls is not None:
                        calls.result()  # raises what building them raised
                    calls = asyncio.create_task(store.refresh_calls())
        if store is not None:
            pending.append(store.submit_events(chunk))
            while pending:
                count_stored(
                    await asyncio.gather(*pending.popleft(), return_exceptions=True), summary
                )
    except BaseException:  # --strict, Ctrl-C: count what was handed over, stop building calls
        if calls is not None:
            calls.cancel()
        while pending:
            count_stored(await asyncio.gather(*pending.popleft(), return_exceptions=True), summary)
        raise
    if calls is not None:
        await calls  # what it raised, raised here


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how --to sends deliveries."""

    url: str
    concurrency: int = 8
    rate: float | None = None  # deliveries per second
    retries: int = 3
    timeout: float = 30.0


def target_url(base: httpx.URL, delivery: Delivery, myid: str | None) -> httpx.URL:
    """The URL for one delivery: the target's own query (a token, say), then the delivery's."""
    query = delivery.raw.query
    myid = myid or delivery.myid
    if myid and not any(is_receiver_name(p.partition(b"=")[0], MYID) for p in query.split(b"&")):
        query = b"myid=" + quote(myid).encode() + (b"&" + query if query else b"")
    if base.query:
        query = base.query + b"&" + query
    return base.copy_with(query=query)


async def send(
    client: httpx.AsyncClient, url: httpx.URL, delivery: Delivery, target: Target, summary: Summary
) -> None:
    """Deliver once, retrying transient failures (network, 429, 5xx) with growing pauses."""
    raw = delivery.raw
    headers = {"content-type": raw.content_type or FORM} if raw.method == "POST" else {}
    problem = ""
    for pause in pauses(target.retries, 0.5, 5):
        await asyncio.sleep(pause)
        try:
            response = await client.request(
                raw.method, url, content=raw.body or None, headers=headers
            )
        except httpx.TransportError as error:
            problem = f"{type(error).__name__}: {error}"
            continue
        if transient(response.status_code):
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            continue
        if response.is_success:
            try:
                duplicate = response.json().get("duplicate") is True
            except ValueError:
                duplicate = False
            if duplicate:
                summary.duplicates += 1
            else:
                summary.stored += 1
            return
        summary.problem(
            delivery.where,
            f"refused with HTTP {response.status_code}: {response.text[:200]}",
            failed=True,
        )
        return
    summary.problem(
        delivery.where, f"not delivered after {target.retries + 1} tries: {problem}", failed=True
    )


async def to_receiver(
    deliveries: Iterator[Delivery], target: Target, options: Options, summary: Summary
) -> None:
    """Send each delivery, with its original method, to a running receiver (or any URL)."""
    base = httpx.URL(target.url)
    slots = asyncio.Semaphore(target.concurrency)
    running: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=target.timeout) as client:
        for number, delivery in enumerate(deliveries):
            if target.rate:
                await asyncio.sleep(max(0.0, started + number / target.rate - time.monotonic()))
            await slots.acquire()
            summary.events += 1
            task = asyncio.create_task(
                send(client, target_url(base, delivery, options.myid), delivery, target, summary)
            )
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
        await asyncio.gather(*running)


async def replay(
    names: list[str],
    options: Options,
    *,
    store: Storage | None = None,
    target: Target | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Replay every input in turn into `store`, or to `target`; neither: parse only."""
    summary = Summary()
    started = time.monotonic()
    sources = [Input(name) for name in names]  # fail on a missing file before any work
    try:
        for source in sources:
            deliveries = read_deliveries(source, options, summary, progress)
            if target is not None:
                await to_receiver(deliveries, target, options, summary)
            else:
                await into_store(deliveries, store, options, summary)
            if progress is not None:
                progress(source, summary)
    except StrictStop:
        pass
    finally:
        for source in sources:
            source.close()
        summary.seconds = time.monotonic() - started
    return summary
