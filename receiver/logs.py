"""Logging set-up, with the webhook secret masked wherever a URL is logged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import time
from typing import NamedTuple
from urllib.parse import unquote_plus

from receiver.parse import TOKEN, is_receiver_name

REPEATS_EVERY_SECONDS = 10.0  # how often a message that repeats is logged (Repeated)
# A query string in a logged text: what follows a `?` up to the next space.
QUERY_IN_TEXT = re.compile(r"(?<=\?)[^\s?#]+")
# Names of secrets other services put in URLs, masked too (the receiver reads none of them).
OTHER_SECRETS = ("access_token", "api_token", "api_key")


def masked_query(query: str) -> str:
    """A query string with the value of each token parameter as ***: a pair is masked exactly
    when parsing takes its name as the token (parse.is_receiver_name: `token`, `%74oken` and
    `To%4Ben` alike), so what is taken as the token never reaches a log."""
    lowered = query.lower()
    if "%" not in query and "token" not in lowered and "api_key" not in lowered:
        return query  # most queries: no name that could be a secret
    pairs = query.split("&")
    for at, pair in enumerate(pairs):
        name, sep, _ = pair.partition("=")
        secret = is_receiver_name(name.encode("utf-8", "surrogateescape"), TOKEN)
        if sep and (secret or unquote_plus(name).lower() in OTHER_SECRETS):
            pairs[at] = f"{name}=***"
    return "&".join(pairs)


class MaskTokens(logging.Filter):
    """Mask the token in every query string of a log record's arguments (the access log's
    path, a raw request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                QUERY_IN_TEXT.sub(lambda found: masked_query(found[0]), arg)
                if isinstance(arg, str) and "?" in arg
                else arg
                for arg in record.args
            )
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line, for log collectors: time (UTC), level, logger, message, and the
    traceback when there is one; uvicorn's access lines also give their request's parts."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            line.update(zip(ACCESS_PARTS, args, strict=True))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


# The arguments of an access line of uvicorn, in its order (uvicorn/protocols/http/*_impl.py).
ACCESS_PARTS = ("client", "method", "path", "http_version", "status")


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log lines to stderr: text with time, level and logger, or JSON objects (JsonLines)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Repeated:
    """Log messages that can come many times a second at most once per `interval` each kind,
    with how many more of that kind there were.

    Anyone can send a thousand bad deliveries a second, and on a full disk every delivery fails:
    a line for each filled the log (15 MB in 14 s) and the disk it was on. The first of a kind
    is logged at once; the others in the next `interval` seconds are counted, and at its end
    (or at the next one after it, outside an event loop) the latest is logged with the count.
    """

    def __init__(self, logger: logging.Logger, interval: float = REPEATS_EVERY_SECONDS) -> None:
        self.logger = logger
        self.interval = interval
        self.quiet_until: dict[str, float] = {}  # kind -> until when the next ones are counted
        self.held: dict[str, Held] = {}  # kind -> the latest not logged, and how many

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log `message % args` (and `exc_info`'s traceback) now, or count it if one of `kind`
        was logged lately."""
        now = time.monotonic()
        if now >= self.quiet_until.get(kind, 0.0):
            self.flush(kind)  # one held from the last interval, when no loop logged it
            self.quiet_until[kind] = now + self.interval
            self.logger.log(level, message, *args, exc_info=exc_info)
            return
        held = self.held.get(kind)
        self.held[kind] = Held(level, message, args, exc_info, held.times + 1 if held else 1)
        if held is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next call logs it
                loop = asyncio.get_running_loop()
                loop.call_later(self.quiet_until[kind] - now, self.flush, kind)

    def flush(self, kind: str) -> None:
        """Log the latest held message of `kind` with the count of those held."""
        held = self.held.pop(kind, None)
        if held is None:
            return
        self.quiet_until[kind] = time.monotonic() + self.interval
        more = held.times - 1
        said = f" (and {more} more like it in the last {self.interval:g} s, not logged)"
        message = held.message + (said if more else "")
        self.logger.log(held.level, message, *held.args, exc_info=held.exc_info)

    def flush_all(self) -> None:
        """Log every held message now (at shutdown: their counts would be lost)."""
        for kind in list(self.held):
            self.flush(kind)


class Held(NamedTuple):
    """A message not logged yet: the latest of its kind, and how many of them there were."""

    level: int
    message: str
    args: tuple[object, ...]
    exc_info: BaseException | None
    times: int
