"""Where messages go: the destinations of --forward and --forward-rules, checked at start.

`--forward URL` (repeatable) sends every message to each URL, signed with `--forward-secret`.
A rules file (TOML) says more per destination:

    [[destination]]
    url = "https://crm.example.com/hooks/pbx"
    secret = "whsec_..."                          # signs its messages (else --forward-secret)
    myids = ["85219", "85218"]                    # only these myids' messages (default: all)
    types = ["call.missed", "call.completed"]     # only these messages (default: all)
    timeout = 5                                   # seconds for an answer (--forward-timeout)
    concurrency = 4                               # messages in flight (--forward-concurrency)
    original = true                               # event.received as the PBX's own form
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.forward.signing import secret_key

EVENT_RECEIVED = "event.received"
CALL_TYPES = ("call.started", "call.answered", "call.missed", "call.completed")
MESSAGE_TYPES = (EVENT_RECEIVED, *CALL_TYPES)
RULE_KEYS = ("url", "secret", "myids", "types", "timeout", "concurrency", "original")
TIMEOUT_RANGE = (0.1, 300.0)
CONCURRENCY_RANGE = (1, 256)


@dataclasses.dataclass(frozen=True)
class Route:
    """What the writer needs of a destination to write its messages into the outbox: which
    messages it takes, and in which form. No secret: that stays with the delivery worker."""

    url: str
    myids: frozenset[str] | None = None  # None: every myid
    types: frozenset[str] | None = None  # None: every message type
    original: bool = False  # event.received as the PBX's form, not JSON

    def takes(self, message_type: str, myid: str) -> bool:
        return (self.types is None or message_type in self.types) and (
            self.myids is None or myid in self.myids
        )

    @property
    def wants_calls(self) -> bool:
        return self.types is None or any(kind in self.types for kind in CALL_TYPES)


@dataclasses.dataclass(frozen=True)
class Destination:
    """A destination as the delivery worker sends to it."""

    route: Route
    key: bytes | None  # the signing key, from its whsec_ secret
    timeout: float
    concurrency: int

    @property
    def url(self) -> str:
        return self.route.url


def check_url(url: str, where: str) -> str:
    """An http(s) URL with a host, or ValueError saying what to fix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{where} {url!r} is not an http:// or https:// URL: give the full address of the "
            "webhook to forward to, as https://crm.example.com/hooks/pbx"
        )
    return url


def load_destinations(
    urls: tuple[str, ...],
    secret: str | None,
    rules: Path | None,
    *,
    timeout: float,
    concurrency: int,
) -> tuple[Destination, ...]:
    """Every destination of the settings, checked. Raises ValueError: one line saying what to
    fix (a URL that is not http(s), an unreadable rules file, a secret not whsec_...)."""
    key = secret_key(secret) if secret else None
    found = [
        Destination(Route(check_url(url, "--forward")), key, timeout, concurrency) for url in urls
    ]
    if rules is not None:
        found += read_rules(rules, key, timeout=timeout, concurrency=concurrency)
    seen: set[str] = set()
    for destination in found:
        if destination.url in seen:
            raise ValueError(
                f"the destination {destination.url} is given twice (in --forward or "
                "--forward-rules): give each URL once"
            )
        seen.add(destination.url)
    return tuple(found)


def read_rules(
    path: Path, key: bytes | None, *, timeout: float, concurrency: int
) -> list[Destination]:
    """The destinations of a rules file."""
    where = f"--forward-rules {path}"
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(
            f"{where}: cannot read it ({error.strerror}): give a readable file"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is not TOML: {error}") from None
    unknown = sorted(set(table) - {"destination"})
    if unknown:
        raise ValueError(f"{where}: unknown table {unknown[0]!r}: write [[destination]] tables")
    entries = table.get("destination", [])
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where} has no [[destination]] table: give at least one, with its url")
    return [
        rule_destination(entry, f"{where}, destination {number}", key, timeout, concurrency)
        for number, entry in enumerate(entries, start=1)
    ]


def rule_destination(
    entry: dict[str, Any], where: str, key: bytes | None, timeout: float, concurrency: int
) -> Destination:
    unknown = sorted(set(entry) - set(RULE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}: use {', '.join(RULE_KEYS)}")
    url = entry.get("url")
    if not isinstance(url, str):
        raise ValueError(f'{where} has no url: give url = "https://..."')
    check_url(url, f"{where}: url")
    secret = entry.get("secret")
    if secret is not None:
        if not isinstance(secret, str):
            raise ValueError(f"{where}: secret must be a string, whsec_...")
        key = secret_key(secret, f"{where}: secret")
    myids = string_set(entry, "myids", where)
    types = string_set(entry, "types", where)
    if types is not None:
        wrong = sorted(types - set(MESSAGE_TYPES))
        if wrong:
            raise ValueError(
                f"{where}: {wrong[0]!r} is not a message type: use {', '.join(MESSAGE_TYPES)}"
            )
    original = entry.get("original", False)
    if not isinstance(original, bool):
        raise ValueError(f"{where}: original must be true or false")
    low, high = TIMEOUT_RANGE
    timeout = entry.get("timeout", timeout)
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not number or not low <= timeout <= high:
        raise ValueError(f"{where}: timeout must be a number of seconds from {low} to {high:g}")
    low_c, high_c = CONCURRENCY_RANGE
    concurrency = entry.get("concurrency", concurrency)
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not (low_c <= concurrency <= high_c)
    ):
        raise ValueError(f"{where}: concurrency must be a whole number from {low_c} to {high_c}")
    return Destination(Route(url, myids, types, original), key, float(timeout), concurrency)


def string_set(entry: dict[str, Any], name: str, where: str) -> frozenset[str] | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f'{where}: {name} must be a list of strings, as ["85219"]')
    return frozenset(value)
