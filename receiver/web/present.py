"""How the pages show values: times on the zone's clock, durations, statuses, masked numbers.

Pure functions, used as the templates' filters.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import unquote_plus, urlencode

from receiver.event import iso_time

NONE = "\u2013"  # an en dash: no value
STATUS_LABELS = {
    "answered": "answered",
    "missed": "missed",
    "in_progress": "in progress",
    "busy": "busy",
    "no_answer": "no answer",
    "cancelled": "cancelled",
    "failed": "failed",
    "unknown_end": "no end seen",
}
# A run of digits long enough to be a phone number (an extension such as 2566*101 is shorter),
# with the separators people write between them.
PHONE_FIELDS = {"calleridnum", "calleridname", "calleddid", "callednumber", "remotenumber",
                "diversion"}  # fmt: skip
PHONE_DIGITS = re.compile(r"(\+)?(\d(?:[\d\s()-]*\d){6,})")


def moment(value: str | int | None, place: tzinfo) -> datetime | None:
    """An ISO time or µs since the epoch as an aware datetime on the zone's clock."""
    if value is None:
        return None
    if isinstance(value, int):
        value = iso_time(value)
        if value is None:
            return None
    return datetime.fromisoformat(value).astimezone(place)


def clock(value: str | int | None, place: tzinfo, today: datetime | None = None) -> str:
    """`2025-12-01 09:00:05`, or `09:00:05` for a time on `today`'s date."""
    shown = moment(value, place)
    if shown is None:
        return NONE
    if today is not None and shown.date() == today.date():
        return shown.strftime("%H:%M:%S")
    return shown.strftime("%Y-%m-%d %H:%M:%S")


def duration(value: float | None) -> str:
    """Seconds as `0:42`, `12:05` or `1:02:03`."""
    if value is None:
        return NONE
    whole = round(value)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def waited(seconds: float | None) -> str:
    """A wait in words: `45 s`, `12 min`, `3 h 05 min`, `2 days`."""
    if seconds is None:
        return NONE
    if seconds < 60:
        return f"{max(0, int(seconds))} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    days = int(seconds // 86400)
    return f"{days} day{'s' if days > 1 else ''}"


def status_label(status: str | None) -> str:
    return STATUS_LABELS.get(status or "", status or NONE)


def mask_number(number: str | None) -> str | None:
    """The number with its middle digits hidden: `+7495•••••67`; short ones (extensions) kept."""
    if number is None:
        return None
    digit_places = [i for i, char in enumerate(number) if char.isdigit()]
    if len(digit_places) < 7:
        return number
    keep_start, keep_end = 4, 2
    hidden = set(digit_places[keep_start:-keep_end])
    return "".join("•" if i in hidden else char for i, char in enumerate(number))


def mask_numbers_in(text: str) -> str:
    """A raw request (a query string or form body) with the phone numbers in the PBX's number
    fields masked as mask_number does; times, durations and ids are left as they are."""

    def field(pair: str) -> str:
        name, sep, value = pair.partition("=")
        if sep and unquote_plus(name).lower() in PHONE_FIELDS:  # shown decoded, once masked
            value = PHONE_DIGITS.sub(lambda m: (m[1] or "") + (mask_number(m[2]) or ""),
                                     unquote_plus(value, errors="replace"))  # fmt: skip
        return name + sep + value

    return "&".join(field(pair) for pair in text.split("&"))


def extension_name(extension: str | None) -> str:
    """`2566*101@sipproxy.telphin.ru` as `101`, the part people dial."""
    if not extension:
        return NONE
    short = extension.split("@")[0]
    return short.split("*")[-1]


def short_id(value: str | None, size: int = 8) -> str:
    return NONE if not value else value if len(value) <= size else value[:size] + "…"


def query_string(params: dict[str, Any]) -> str:
    """The filled-in parameters as a query string (for links that keep a page's filters)."""
    pairs = []
    for name, value in params.items():
        for one in value if isinstance(value, list | tuple) else [value]:
            if one not in (None, ""):
                pairs.append((name, one))
    return urlencode(pairs)
