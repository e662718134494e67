"""Every setting of the receiver, declared once: name, default and one-line help.

Each is a `receiver serve` flag (`--max-body`) and an environment variable (`RECEIVER_MAX_BODY`).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
from pathlib import Path
from typing import Any

from receiver.parse import MYID_SHAPE, is_valid_myid, shown
from receiver.zones import zone

# The most a count, a size or a number of seconds may be: far above any real use, and far
# below what SQLite's 64-bit integers (and the microseconds made from seconds) can hold.
MOST = 2**31 - 1
LOG_LEVELS = ("debug", "info", "warning", "error")


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None) -> Any:
    """A settings field with its help text and, for a number, the range it must be in."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high})


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one receiver runs."""

    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8000, "Port to listen on.", low=1, high=65535)
    db: Path = setting(Path("receiver.db"), "SQLite database file (created if missing).")
    default_myid: str | None = setting(
        None, "myid for deliveries whose URL has none (otherwise they get 400)."
    )
    token: str | None = setting(
        None, "Shared secret: deliveries must carry ?token=<secret> in the URL (else 403)."
    )
    tokens: str | None = setting(
        None, "Per-myid secrets as 'myid=secret,myid=secret'; they beat --token for those myids."
    )
    api_token: str | None = setting(
        None, "Bearer token required for everything under /api/ (else 401)."
    )
    max_body: int = setting(
        65536, "Largest POST body accepted, in bytes (else 413).", low=1, high=MOST
    )
    header_timeout: float = setting(
        10.0,
        "Seconds a connection has to send a request's headers (else it is closed).",
        low=0.1,
        high=86400,
    )
    body_timeout: float = setting(
        30.0,
        "Seconds a delivery has to send its whole body, from its headers (else 408).",
        low=0.1,
        high=86400,
    )
    rejects_max: int = setting(
        10000, "How many refused deliveries to keep for inspection.", low=1, high=MOST
    )
    rejects_max_bytes: int = setting(
        64 << 20,
        "Most bytes of raw query and body the refused deliveries kept may take.",
        low=1,
        high=MOST,
    )
    unknown_end_after: int = setting(
        14400,
        "Seconds after its last event that a call with no hangup counts as unknown_end.",
        low=1,
        high=MOST,
    )
    log_level: str = setting("info", "Log level: debug, info, warning, error.")
    access_log: bool = setting(False, "Log every request (tokens are masked).")
    timezone: str = setting(
        "UTC",
        "IANA time zone (Europe/Moscow) of the pages' times and of the reports' days and hours.",
    )

    mask_numbers: bool = setting(
        False, "Show phone numbers on the pages with their middle digits hidden (wall displays)."
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            problem = range_problem(field.name, getattr(self, field.name))
            if problem:
                raise ValueError(f"{flag_name(field.name)} {problem}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"--log-level {self.log_level!r} is not a level: use {', '.join(LOG_LEVELS)}"
            )
        try:
            zone(self.timezone)
        except ValueError as problem:
            raise ValueError(f"--timezone {problem}") from None
        self.token_table  # noqa: B018 -- parse now: fail at start-up, not on the first delivery
        if self.default_myid and not is_valid_myid(self.default_myid):
            raise ValueError(
                f"--default-myid {shown(self.default_myid)} is not a valid myid: use {MYID_SHAPE}"
            )

    @functools.cached_property
    def token_table(self) -> dict[str, str]:
        """The per-myid tokens as a dict. Raises ValueError on a malformed --tokens."""
        table = {}
        for item in (self.tokens or "").split(","):
            if not item.strip():
                continue
            myid, sep, secret = item.partition("=")
            if not sep or not myid.strip() or not secret:
                raise ValueError(f"--tokens entry {item!r} is not 'myid=secret'")
            table[myid.strip()] = secret
        return table

    def token_accepts(self, myid: str, token: str | None) -> bool:
        """Whether a delivery for `myid` carrying `token` may be stored."""
        table = self.token_table
        expected = table.get(myid, self.token)
        if expected is None:
            return not table  # per-myid tokens configured: a myid without one is refused
        return token is not None and hmac.compare_digest(token.encode(), expected.encode())


def describe() -> list[tuple[str, Any, str]]:
    """(name, default, help) of every setting, in declaration order."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(Settings)]


def range_problem(name: str, value: Any) -> str | None:
    """What is wrong with a setting's number, from the range it declares; None when nothing."""
    field = next(f for f in dataclasses.fields(Settings) if f.name == name)
    low, high = field.metadata.get("low"), field.metadata.get("high")
    if value is None or (low is None and high is None):
        return None
    if not ((low is None or value >= low) and (high is None or value <= high)):  # NaN too
        if high is None:
            allowed = f"{low} or more"
        else:
            allowed = f"{high} or less" if low is None else f"{low} to {high}"
        return f"{value} is out of range: use {allowed}"
    return None


def env_name(name: str) -> str:
    """The environment variable of a setting: `max_body` -> `RECEIVER_MAX_BODY`."""
    return f"RECEIVER_{name.upper()}"


def flag_name(name: str) -> str:
    """The CLI flag of a setting: `max_body` -> `--max-body`."""
    return "--" + name.replace("_", "-")
