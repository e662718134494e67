"""Every setting of the receiver, declared once: name, default and one-line help.

Each is a `receiver serve` flag (`--max-body`) and an environment variable (`RECEIVER_MAX_BODY`).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from receiver.parse import MYID_SHAPE, is_valid_myid, shown
from receiver.silence import WorkingHours
from receiver.zones import zone

if TYPE_CHECKING:
    from receiver.forward.rules import Destination

# The most a count, a size or a number of seconds may be: far above any real use, and far
# below what SQLite's 64-bit integers (and the microseconds made from seconds) can hold.
MOST = 2**31 - 1
LOG_LEVELS = ("debug", "info", "warning", "error")
PBX_API_URL = "https://apiproxy.telphin.ru/api/ver1.0"
RECONCILE_RANGE = (60, 86400)  # seconds between two reconciliations, at least and at most
LOG_FORMATS = ("text", "json")
# A duration's units: `30m`, `12h`, `400d`; a number alone is seconds.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None) -> Any:
    """A settings field with its help text and, for a number, the range it must be in."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high})


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one receiver runs."""

    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8000, "Port to listen on.", low=1, high=65535)
    db: Path | str = setting(
        Path("receiver.db"),
        "Database: an SQLite file (created if missing), or a PostgreSQL database as "
        "postgresql://user:password@host:5432/dbname (its tables made if missing).",
    )
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
    pbx_api_url: str = setting(
        PBX_API_URL, "The PBX's REST API, for --reconcile-every and the calls' recordings."
    )
    pbx_client_id: str | None = setting(None, "The PBX API application's id (Application_ID).")
    pbx_client_secret: str | None = setting(
        None, "The PBX API application's secret (Application_Secret)."
    )
    reconcile_every: str | None = setting(
        None,
        "Reconcile the calls with the PBX's call history this often (90s, 15m, 1h; 1m to 24h).",
    )
    log_level: str = setting("info", "Log level: debug, info, warning, error.")
    access_log: bool = setting(False, "Log every request (tokens are masked).")
    log_format: str = setting("text", "Log lines as text, or as JSON objects: text, json.")
    metrics_public: bool = setting(
        False, "Serve /metrics without the --api-token (for a scraper inside a trusted network)."
    )
    min_free_disk: int = setting(
        100 << 20,
        "Bytes free on the database's disk below which /readyz answers 503.",
        low=0,
        high=2**50,
    )
    silence_after: str | None = setting(
        None, "Report a myid that sent events before and then none for this long (30m, 2h)."
    )
    silence_hours: str | None = setting(
        None,
        "Count --silence-after only within these hours of --timezone (09:00-18:00, or with days: "
        "mon-fri 09:00-18:00).",
    )
    retention: str | None = setting(
        None, "Delete events older than this once a day, as receiver prune does (400d)."
    )
    timezone: str = setting(
        "UTC",
        "IANA time zone (Europe/Moscow) of the pages' times and of the reports' days and hours.",
    )
    mask_numbers: bool = setting(
        False, "Show phone numbers on the pages with their middle digits hidden (wall displays)."
    )
    forward: tuple[str, ...] = setting(
        (),
        "Forward every event and call to this webhook URL (repeatable; the variable takes "
        "several, separated by spaces).",
    )
    forward_secret: str | None = setting(
        None, "Sign forwarded messages with this Standard Webhooks secret (whsec_<base64>)."
    )
    forward_rules: Path | None = setting(
        None,
        "TOML file of destinations: url, secret, myids, types, timeout, concurrency, original.",
    )
    forward_settle: float = setting(
        5.0,
        "Seconds a call's end waits for more events before call.missed or call.completed.",
        low=0,
        high=3600,
    )
    forward_retries: str = setting(
        "5s 5m 30m 2h 5h 10h 10h",
        "Waits before each retry of a forwarded message, then it is dead.",
    )
    forward_timeout: float = setting(
        10.0, "Seconds a destination has to answer a forwarded message.", low=0.1, high=300
    )
    forward_concurrency: int = setting(
        16, "Forwarded messages in flight at once, per destination.", low=1, high=256
    )
    forward_outbox_max: int = setting(
        1_000_000,
        "Most messages the outbox keeps; beyond, the oldest delivered go first.",
        low=100,
        high=MOST,
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
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"--log-format {self.log_format!r} is not a format: use {', '.join(LOG_FORMATS)}"
            )
        for name in ("silence_after", "retention"):
            text = getattr(self, name)
            if text is not None:
                duration_seconds(text, flag_name(name))
        try:
            zone(self.timezone)
        except ValueError as problem:
            raise ValueError(f"--timezone {problem}") from None
        if self.silence_hours is not None:
            try:
                self.working_hours  # noqa: B018 -- parse now: fail at start-up
            except ValueError as problem:
                raise ValueError(f"--silence-hours {problem}") from None
        self.token_table  # noqa: B018 -- parse now: fail at start-up, not on the first delivery
        self.retry_schedule  # noqa: B018 -- the same
        self.destinations  # noqa: B018 -- the same
        if self.reconcile_every is not None:
            self.reconcile_seconds  # noqa: B018 -- the same
            if not (self.pbx_client_id and self.pbx_client_secret):
                raise ValueError(
                    "--reconcile-every reads the PBX's call history: it needs --pbx-client-id "
                    "and --pbx-client-secret (or RECEIVER_PBX_CLIENT_ID and "
                    "RECEIVER_PBX_CLIENT_SECRET)"
                )
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

    @functools.cached_property
    def reconcile_seconds(self) -> int | None:
        """--reconcile-every in seconds (None: never). Raises ValueError when malformed."""
        if self.reconcile_every is None:
            return None
        found = DURATION.fullmatch(self.reconcile_every.lower())
        seconds = int(float(found[1]) * DURATION_UNITS[found[2] or "s"]) if found else None
        low, high = RECONCILE_RANGE
        if seconds is None or not low <= seconds <= high:
            raise ValueError(
                f"--reconcile-every {self.reconcile_every!r} is not a period from 1m to 24h: "
                "give seconds, minutes or hours, as 900, 90s, 15m or 1h"
            )
        return seconds

    @functools.cached_property
    def retry_schedule(self) -> tuple[float, ...]:
        """--forward-retries in seconds. Raises ValueError when malformed."""
        waits = self.forward_retries.split()
        if not waits or len(waits) > 50:
            raise ValueError(
                f"--forward-retries {self.forward_retries!r}: give 1 to 50 waits separated by "
                "spaces, as '5s 5m 30m 2h 5h 10h 10h'"
            )
        return tuple(duration_seconds(wait, "--forward-retries") for wait in waits)

    @functools.cached_property
    def destinations(self) -> tuple[Destination, ...]:
        """Where messages are forwarded (forward/rules.py). Raises ValueError saying what to
        fix."""
        from receiver.forward.rules import load_destinations

        return load_destinations(
            tuple(self.forward),
            self.forward_secret,
            self.forward_rules,
            timeout=self.forward_timeout,
            concurrency=self.forward_concurrency,
        )

    @property
    def silence_seconds(self) -> float | None:
        """--silence-after in seconds (None: no silence alerts)."""
        return None if self.silence_after is None else duration_seconds(self.silence_after)

    @property
    def working_hours(self) -> WorkingHours | None:
        """--silence-hours on the clock of --timezone (None: silence counts at any hour)."""
        if self.silence_hours is None:
            return None
        return WorkingHours.parse(self.silence_hours, zone(self.timezone))

    @property
    def retention_seconds(self) -> float | None:
        """--retention in seconds (None: events are kept for ever)."""
        return None if self.retention is None else duration_seconds(self.retention)

    def token_accepts(self, myid: str, token: str | None) -> bool:
        """Whether a delivery for `myid` carrying `token` may be stored."""
        table = self.token_table
        expected = table.get(myid, self.token)
        if expected is None:
            return not table  # per-myid tokens configured: a myid without one is refused
        return token is not None and hmac.compare_digest(token.encode(), expected.encode())


def duration_seconds(text: str, flag: str = "duration") -> float:
    """`30m`, `12h`, `400d`, `2w` or a number of seconds, in seconds. Raises ValueError."""
    found = DURATION.fullmatch(text)
    seconds = float(found[1]) * DURATION_UNITS[found[2] or "s"] if found else 0
    if not found or not 1 <= seconds <= MOST:
        raise ValueError(
            f"{flag} {text!r} is not a duration: give a number and a unit, s, m, h, d or w "
            f"(30m, 12h, 400d), from 1 s to {MOST} s"
        )
    return seconds


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
